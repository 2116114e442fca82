"""Fuzz target: nv.load_model on arbitrary bytes (seed corpus: corpus/load_model)."""
import io

import atheris

with atheris.instrument_imports(include=["nerve.model", "nerve.layers"]):
    import nerve as nv

from _common import run


def target(path, data):
    nv.load_model(path)
    nv.load_model(io.BytesIO(data), compile=False)


if __name__ == "__main__":
    run(target, ".nerve")
