"""nv.surfaces: gradients against finite differences, minima, shapes."""
import numpy as np
import pytest

import nerve as nv

SURFACES = list(nv.surfaces.ALL.values())


@pytest.mark.parametrize("s", SURFACES, ids=lambda s: s.name)
def test_gradient_matches_finite_differences(s):
    r = np.random.default_rng(0)
    (x0, x1), (y0, y1) = s.window
    pts = np.stack([r.uniform(x0, x1, 50), r.uniform(y0, y1, 50)], axis=-1)
    h = 1e-6
    num = np.stack([(s.f(pts + h * e) - s.f(pts - h * e)) / (2 * h) for e in np.eye(2)], axis=-1)
    g = s.grad(pts)
    assert g.shape == pts.shape
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-5 * max(1.0, np.abs(num).max()))


@pytest.mark.parametrize("s", SURFACES, ids=lambda s: s.name)
def test_minima_and_start(s):
    if len(s.minima):
        np.testing.assert_allclose(s.f(s.minima), s.f_min, atol=1e-9)
        np.testing.assert_allclose(s.grad(s.minima), 0.0, atol=1e-4)
        assert np.all(s.distance_to_minimum(s.minima) == 0)
        # nothing on a grid over the window is lower than the minimum
        _, _, F = s.grid(101)
        assert F.min() >= s.f_min - 1e-9
    else:
        assert s.f_min == -np.inf
        np.testing.assert_allclose(s.grad(s.saddle_points), 0.0)
        assert np.isinf(s.distance_to_minimum(s.start))
    (x0, x1), (y0, y1) = s.window
    assert x0 < s.start[0] < x1 and y0 < s.start[1] < y1
    assert s.f(s.start) > (s.f_min if np.isfinite(s.f_min) else -np.inf)


def test_saddle_and_ravine_shapes():
    # x² − y²: a minimum along x, a maximum along y at the origin
    assert nv.surfaces.saddle.f([0.5, 0.0]) > 0 > nv.surfaces.saddle.f([0.0, 0.5])
    # the ravine's curvature differs 100-fold between the axes
    h = nv.surfaces.ravine
    assert h.f([0.0, 1.0]) == pytest.approx(100 * h.f([1.0, 0.0]))


def test_batched_shapes_and_bad_input():
    s = nv.surfaces.beale
    pts = np.zeros((3, 4, 2))
    assert s.f(pts).shape == (3, 4) and s.grad(pts).shape == (3, 4, 2)
    assert np.ndim(s.f([3.0, 0.5])) == 0
    for bad in (np.zeros(3), np.zeros((4, 3)), 1.0):
        with pytest.raises(ValueError, match="shape"):
            s.f(bad)


@pytest.mark.parametrize("name,kw,steps", [("Adam", dict(lr=0.05), 600), ("SGD", dict(lr=1e-3, momentum=0.9), 3000)])
def test_optimizers_descend_rosenbrock(name, kw, steps):
    s = nv.surfaces.rosenbrock
    p = nv.Parameter(s.start)
    opt = getattr(nv.optimizers, name)([p], **kw)
    f0 = s.f(p.value)
    for _ in range(steps):
        p.grad[...] = s.grad(p.value)
        opt.step()
    assert s.f(p.value) < 1e-2 * f0
