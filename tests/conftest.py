import os

# scikit-learn's array-API check (run for nerve.sklearn's estimators in
# tests/test_sklearn.py) needs this set before scipy is imported; without it
# the check skips itself, and every check must run.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

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


# -- models with every layer kind, for the export and interop tests -----------

# Non-default parameters for activations that take them, so exporters must
# carry the values, not the defaults.
ACTIVATION_VARIANTS = {
    "leaky_relu": [{"alpha": 0.2}], "elu": [{"alpha": 0.7}], "swish": [{}, {"beta": 1.7}],
    "gelu": [{}, {"approximate": "tanh"}], "softplus": [{}, {"beta": 2.0, "threshold": 3.0}],
    "binary_step": [{}, {"straight_through": True}], "rrelu": [{"lower": 0.1, "upper": 0.3}],
}


def activation_cases():
    """[(label, name, params)] for every registered activation (and variants)."""
    out = []
    for row in nv.activations.names():
        for params in ACTIVATION_VARIANTS.get(row["name"], [{}]):
            label = row["name"] + "".join(f"-{k}={v}" for k, v in params.items())
            out.append((label, row["name"], params))
    return out


def trained_briefly(model, x, classes=3, epochs=2):
    """A couple of epochs so BatchNorm running statistics and weights move off their init."""
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    y = np.arange(len(x)) % classes
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def layer_kind_models():
    """[(label, model built for 6 inputs)]: every nerve layer kind at least once
    (Dense with and without bias, Maxout, Activation, BatchNorm, Dropout,
    AlphaDropout, GaussianNoise, Residual with BatchNorm inside, PReLU shared
    and per feature, Swish learnable and fixed), trained a little."""
    L = nv.layers
    x = rng(5).standard_normal((64, 6)).astype(np.float32)
    specs = {
        "dense": lambda: [L.Dense(9, activation="tanh"), L.Dense(3)],
        "dense_nobias": lambda: [L.Dense(9, activation="relu", use_bias=False), L.Dense(3, use_bias=False)],
        "maxout": lambda: [L.Maxout(5, pieces=3), L.Maxout(3, pieces=2, use_bias=False)],
        "activation_batchnorm": lambda: [L.Dense(8), L.BatchNorm(momentum=0.3), L.Activation("elu"),
                                         L.Dense(3)],
        "batchnorm_first": lambda: [L.BatchNorm(eps=1e-3), L.Dense(3)],
        "noise": lambda: [L.GaussianNoise(0.3), L.Dense(8, activation="selu"), L.AlphaDropout(0.2),
                          L.Dropout(0.3), L.Dense(3)],
        "residual": lambda: [L.Dense(8, activation="relu"),
                             L.Residual([L.Dense(8, activation="gelu"), L.BatchNorm(), L.Dropout(0.1),
                                         L.Dense(8)]),
                             L.Residual([L.Residual([L.Dense(8, activation="tanh")])]), L.Dense(3)],
        "prelu": lambda: [L.Dense(8), L.PReLU(init=0.1), L.Dense(7), L.PReLU(shared=False), L.Dense(3)],
        "swish": lambda: [L.Dense(8), L.Swish(beta=1.3), L.Dense(8), L.Swish(beta=0.8, learnable=False),
                          L.Dense(3)],
    }
    out = []
    for label, make in specs.items():
        nv.manual_seed(7)
        out.append((label, trained_briefly(nv.Sequential(make(), input_dim=6), x)))
    return out


def close_to_scale(got, want, rtol=1e-5):
    """max |got - want| <= rtol * max |want| (relative to the output's scale,
    so outputs near zero are held to the same absolute accuracy)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} x scale {scale:.3g}"


# The oracle and bit-identity tests that .ci/run repeats at every CPU level
# below the best this machine has (NERVE_CPU=<level> python -m pytest -m levels):
# the kernels' formulas against numpy, gradients against differences, and the
# same bits for any thread count, at each level's own kernels.
LEVEL_TEST_FILES = {
    "test_activations.py", "test_losses.py", "test_optimizers.py", "test_initializers.py",
    "test_layers_norm.py", "test_gemm.py", "test_gemm_kernel.py", "test_dense_forward.py",
    "test_dense_backward.py", "test_fused_update.py", "test_regressions.py", "test_build.py",
    "test_recurrent.py",
    "test_margin.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if os.path.basename(str(item.fspath)) in LEVEL_TEST_FILES:
            item.add_marker(pytest.mark.levels)
