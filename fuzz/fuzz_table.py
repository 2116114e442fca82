"""Fuzz target: the CSV / NPZ reader nv.datasets.load_file (seed corpus: corpus/table)."""
import atheris

with atheris.instrument_imports(include=["nerve.datasets"]):
    import nerve as nv

from _common import run


def target(path, data):
    suffix = ".npz" if data[:2] == b"PK" else ".csv"
    real = path[: -len(".csv")] + suffix
    if real != path:
        with open(real, "wb") as f:
            f.write(data)
    nv.datasets.load_file(real)


if __name__ == "__main__":
    run(target, ".csv")
