"""The optimizer-path example's numbers (without plotting): every optimizer
runs, the adaptive ones reach Beale's minimum, plain SGD stalls at the saddle
while momentum escapes."""
import importlib.util
import os

import numpy as np

import nerve as nv

HERE = os.path.dirname(os.path.abspath(__file__))


def load_example(name):
    path = os.path.join(HERE, "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_optimizer_paths_tables(capsys):
    ex = load_example("optimizer_paths")
    beale, saddle = nv.surfaces.beale, nv.surfaces.saddle
    paths = {k: ex.run(beale, c, h, ex.STEPS["beale"]) for k, (c, h) in ex.OPTIMIZERS["beale"].items()}
    assert len(paths) == 11
    for label in ("Adam", "NAdam", "Adagrad", "Momentum"):
        assert ex.reached(beale, paths[label]) is not None, label
    assert ex.reached(beale, paths["SGD"]) is None  # plain SGD is still on the plateau after 600 steps
    sp = {k: ex.run(saddle, c, h, ex.STEPS["saddle"]) for k, (c, h) in ex.OPTIMIZERS["saddle"].items()}
    assert ex.reached(saddle, sp["SGD"]) is None
    assert ex.reached(saddle, sp["Momentum"]) is not None
    # all paths start at the same point and stay finite
    for surface, group in ((beale, paths), (saddle, sp)):
        for path in group.values():
            np.testing.assert_array_equal(path[0], surface.start)
            assert np.all(np.isfinite(path))
    ex.main(["--no-plot", "--surfaces", "beale"])
    out = capsys.readouterr().out
    assert "| Adam |" in out and "| Ftrl |" in out
