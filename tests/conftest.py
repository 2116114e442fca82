import numpy as np
import pytest

import nerve as nv


@pytest.fixture(autouse=True)
def _seed():
    nv.manual_seed(1234)
    yield


def core_dense(act, n_in, units, seed, scale=0.5):
    """A bare _core.Dense (with bias) bound to its own arena, weights and bias
    drawn from U(-scale, scale): (layer, arena, w, b), w and b views into the arena."""
    from nerve import _core

    layer = _core.Dense(n_in, units, act, True)
    arena = _core.Arena(n_in * units + units)
    layer.bind_params(arena, 0, n_in * units)
    r = np.random.default_rng(seed)
    w = arena.values(0, n_in * units).reshape(n_in, units)
    w[...] = r.uniform(-scale, scale, (n_in, units)).astype(np.float32)
    b = arena.values(n_in * units, units)
    b[...] = r.uniform(-scale, scale, units).astype(np.float32)
    return layer, arena, w, b


def rng(seed=0):
    return np.random.default_rng(seed)


def directional_grad_check(loss_fn, params, analytic, eps=1e-3, trials=4, seed=0, rtol=2e-2, atol=1e-4):
    """Compares analytic gradients with central differences along random directions.

    loss_fn() -> float evaluates the loss at the current parameter values;
    `analytic` are gradient arrays aligned with `params` (numpy views that are
    perturbed in place). float32 forward passes make finite differences noisy,
    so directions are random unit vectors and eps is moderate.
    """
    r = np.random.default_rng(seed)
    for _ in range(trials):
        dirs = [r.standard_normal(p.shape).astype(np.float32) for p in params]
        norm = np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in dirs))
        dirs = [d / norm for d in dirs]
        expected = sum(float((g.astype(np.float64) * d).sum()) for g, d in zip(analytic, dirs))
        for p, d in zip(params, dirs):
            p += eps * d
        up = loss_fn()
        for p, d in zip(params, dirs):
            p -= 2 * eps * d
        down = loss_fn()
        for p, d in zip(params, dirs):
            p += eps * d
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - expected) <= atol + rtol * max(abs(numeric), abs(expected)), (numeric, expected)
