"""Fuzz target: the IDX reader nv.datasets.read_idx (seed corpus: corpus/idx)."""
import atheris

with atheris.instrument_imports(include=["nerve.datasets"]):
    import nerve as nv

from _common import run


def target(path, data):
    nv.datasets.read_idx(path)


if __name__ == "__main__":
    run(target, ".idx")
