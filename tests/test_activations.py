"""Every activation against independent float64 numpy formulas (PyTorch
semantics), numerically differentiated, and through models; the learnable
activation layers (PReLU, Swish, Maxout)."""
import math

import numpy as np
import pytest

import nerve as nv
from conftest import directional_grad_check

# ---------------------------------------------------------------------------
# float64 oracles, written from the definitions (not from nerve's kernels).

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def sig(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def norm_cdf(x):
    return 0.5 * _erfc(-x / math.sqrt(2.0))


def norm_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def softplus64(x):
    return np.logaddexp(0.0, x)


def gelu_tanh_u(x):
    return math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)


def _clip_big(x):
    # x^3 overflows double only far beyond float range; clamp like the
    # sigmoid's saturation makes harmless (|x| > 50 already gives 0 or x).
    return np.clip(x, -50.0, 50.0)


def softmax64(x):
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax64(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


# name -> (params, forward(x), derivative(x) or None for row-wise ones,
#          vjp(x, dy) for row-wise / width-changing ones)
def elementwise(params, f, df):
    return {"params": params, "f": f, "df": df}


ORACLES = {
    "identity": elementwise({}, lambda x: x, lambda x: np.ones_like(x)),
    "sigmoid": elementwise({}, sig, lambda x: sig(x) * sig(-x)),
    "tanh": elementwise({}, np.tanh, lambda x: 1.0 / np.cosh(np.clip(x, -300, 300)) ** 2),
    "relu": elementwise({}, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(np.float64)),
    "leaky_relu": elementwise({}, lambda x: np.where(x > 0, x, 0.01 * x),
                              lambda x: np.where(x > 0, 1.0, 0.01)),
    "leaky_relu(alpha=0.2)": elementwise({"alpha": 0.2}, lambda x: np.where(x > 0, x, 0.2 * x),
                                         lambda x: np.where(x > 0, 1.0, 0.2)),
    "elu": elementwise({}, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                       lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "elu(alpha=0.5)": elementwise({"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))),
                                  lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(np.minimum(x, 0)))),
    "selu": elementwise({}, lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                        lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))),
    "swish": elementwise({}, lambda x: x * sig(x), lambda x: sig(x) + x * sig(x) * sig(-x)),
    "swish(beta=2)": elementwise({"beta": 2.0}, lambda x: x * sig(2 * x),
                                 lambda x: sig(2 * x) + 2 * x * sig(2 * x) * sig(-2 * x)),
    "binary_step": elementwise({}, lambda x: (x >= 0).astype(np.float64), lambda x: np.zeros_like(x)),
    "binary_step(straight_through)": elementwise({"straight_through": True},
                                                 lambda x: (x >= 0).astype(np.float64),
                                                 lambda x: np.ones_like(x)),
    "gelu": elementwise({}, lambda x: x * norm_cdf(x), lambda x: norm_cdf(x) + x * norm_pdf(x)),
    # 0.5 (1 + tanh u) = sigmoid(2u): the same function without 1 + tanh cancelling in double.
    "gelu(tanh)": elementwise(
        {"approximate": "tanh"},
        lambda x: x * sig(2 * gelu_tanh_u(_clip_big(x))),
        lambda x: sig(2 * gelu_tanh_u(_clip_big(x)))
        + x * 2 * sig(2 * gelu_tanh_u(_clip_big(x))) * sig(-2 * gelu_tanh_u(_clip_big(x)))
        * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * _clip_big(x) ** 2)),
    "softplus": elementwise({}, lambda x: np.where(x > 20, x, softplus64(x)),
                            lambda x: np.where(x > 20, 1.0, sig(x))),
    "softplus(beta=2,threshold=10)": elementwise(
        {"beta": 2.0, "threshold": 10.0},
        lambda x: np.where(2 * x > 10, x, softplus64(2 * x) / 2), lambda x: np.where(2 * x > 10, 1.0, sig(2 * x))),
    "mish": elementwise(
        {}, lambda x: x * np.tanh(softplus64(x)),
        lambda x: np.tanh(softplus64(x)) + x * sig(x) / np.cosh(np.minimum(softplus64(x), 300)) ** 2),
    "hard_sigmoid": elementwise({}, lambda x: np.clip(x + 3, 0, 6) / 6,
                                lambda x: ((x > -3) & (x < 3)) / 6.0),
    "hard_swish": elementwise({}, lambda x: x * np.clip(x + 3, 0, 6) / 6,
                              lambda x: np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, x / 3 + 0.5))),
    "relu6": elementwise({}, lambda x: np.clip(x, 0, 6), lambda x: ((x > 0) & (x < 6)).astype(np.float64)),
    # Evaluation mode: the fixed slope (lower + upper) / 2.
    "rrelu": elementwise({}, lambda x: np.where(x > 0, x, x * (1 / 8 + 1 / 3) / 2),
                         lambda x: np.where(x > 0, 1.0, (1 / 8 + 1 / 3) / 2)),
    "rrelu(0.1,0.3)": elementwise({"lower": 0.1, "upper": 0.3}, lambda x: np.where(x > 0, x, 0.2 * x),
                                  lambda x: np.where(x > 0, 1.0, 0.2)),
}
ROWWISE = {
    "softmax": (softmax64, lambda x, dy: softmax64(x) * (dy - (dy * softmax64(x)).sum(1, keepdims=True))),
    "log_softmax": (log_softmax64, lambda x, dy: dy - softmax64(x) * dy.sum(1, keepdims=True)),
    "crelu": (lambda x: np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1),
              lambda x, dy: dy[:, :x.shape[1]] * (x > 0) - dy[:, x.shape[1]:] * (x < 0)),
}


def base_name(key):
    return key.split("(")[0]


ALIASES = {"linear": "identity", "logistic": "sigmoid", "silu": "swish"}


def every_name():
    names = set()
    for row in nv.activations.names():
        names.add(row["name"])
        names.update(row["aliases"])
    return sorted(names)


def test_every_registry_name_has_an_oracle():
    covered = {base_name(k) for k in ORACLES} | set(ROWWISE) | set(ALIASES)
    assert set(every_name()) == covered


def wide_inputs():
    """Float32 points over the whole useful range: a coarse grid to ±1000, a
    fine one around the interesting region, kinks and special values."""
    pts = [np.linspace(-1000, 1000, 2001), np.linspace(-30, 30, 6001), np.linspace(-1, 1, 401),
           np.array([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 100, -100, 1000, -1000, 3, -3, 6,
                     88.7, -88.7, 89.5, -89.5, -103.9, -104.5, 20, 20.0001, 9.9, 10.1, -9, -9.5])]
    x = np.concatenate(pts).astype(np.float32)
    pad = (-x.size) % 8
    return np.concatenate([x, np.zeros(pad, np.float32)]).reshape(-1, 8)


def ulps(got, ref):
    """|got - ref| in units of the float32 spacing at ref. Below the normal
    range (|ref| < 2^-126) float32 has only absolute precision, and a product
    that lands there is rounded twice, so there the unit is 2^-126 * 2^-23 *
    16: errors of a few subnormal steps count as less than one ulp."""
    ref32 = np.abs(ref).astype(np.float32)
    spacing = np.spacing(ref32).astype(np.float64)
    spacing = np.maximum(spacing, 16 * np.spacing(np.finfo(np.float32).tiny).astype(np.float64))
    return np.abs(got.astype(np.float64) - ref) / spacing


# Worst case allowed, in float32 ulp of the float64 value. Measured on this
# grid: <= 2.4 ulp for all but mish (3.3) and swish (3.2).
ULP_LIMIT = {}


def run_act(key, x, **kw):
    spec = ORACLES[key]["params"] if key in ORACLES else {}
    name = base_name(key) if key in ORACLES else key
    return nv.activations.get(name, **spec), name


@pytest.mark.parametrize("key", sorted(ORACLES))
def test_forward_within_few_ulp(key):
    x = wide_inputs()
    act, _ = run_act(key, x)
    y = act.forward(x)
    ref = ORACLES[key]["f"](x.astype(np.float64))
    assert np.all(np.isfinite(y)), "overflow to NaN/Inf where the math is finite"
    err = ulps(y, ref)
    limit = ULP_LIMIT.get(key, 4)
    worst = int(np.argmax(err))
    assert err.max() <= limit, (x.reshape(-1)[worst], y.reshape(-1)[worst], ref.reshape(-1)[worst], err.max())


@pytest.mark.parametrize("key", sorted(ROWWISE))
def test_rowwise_forward_within_few_ulp(key):
    x = wide_inputs()
    x[::3] *= 0.01  # rows of moderate values too, not only saturated ones
    y = nv.activations.get(key).forward(x)
    ref = ROWWISE[key][0](x.astype(np.float64))
    assert y.shape == ref.shape
    assert np.all(np.isfinite(y))
    assert ulps(y, ref).max() <= 4


def derivative_tolerance(ref_dx, dy):
    # A derivative can cancel to near 0 (gelu', mish', swish' at their
    # minimum), so the absolute part scales with the upstream gradient.
    return 16 * np.spacing(np.abs(ref_dx).astype(np.float32)).astype(np.float64) + 2e-7 * np.abs(dy)


@pytest.mark.parametrize("key", sorted(ORACLES))
def test_backward_matches_analytic_derivative(key):
    x = wide_inputs()
    r = np.random.default_rng(1)
    dy = r.uniform(0.5, 2.0, x.shape).astype(np.float32) * r.choice([-1, 1], x.shape).astype(np.float32)
    act, _ = run_act(key, x)
    dx = act.backward(x, dy)
    x64 = x.astype(np.float64)
    ref = ORACLES[key]["df"](x64) * dy
    assert np.all(np.isfinite(dx))
    bad = np.abs(dx - ref) > derivative_tolerance(ref, dy)
    assert not bad.any(), (x[bad][:5], dx[bad][:5], ref[bad][:5])


@pytest.mark.parametrize("key", sorted(ROWWISE))
def test_rowwise_backward_matches_analytic(key):
    x = (np.random.default_rng(2).standard_normal((64, 10)) * 3).astype(np.float32)
    width = 20 if key == "crelu" else 10
    dy = np.random.default_rng(3).standard_normal((64, width)).astype(np.float32)
    dx = nv.activations.get(key).backward(x, dy)
    ref = ROWWISE[key][1](x.astype(np.float64), dy.astype(np.float64))
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-6)


KINKS = {"relu": [0], "leaky_relu": [0], "elu": [0], "selu": [0], "rrelu": [0], "binary_step": [0],
         "hard_sigmoid": [-3, 3], "hard_swish": [-3, 3], "relu6": [0, 6], "crelu": [0],
         "softplus": [10, 20]}


@pytest.mark.parametrize("key", sorted(ORACLES) + sorted(ROWWISE))
def test_backward_matches_numeric_differentiation(key):
    """Central differences of nerve's own forward along random directions.
    (binary_step with straight_through deliberately differs: its backward is
    the identity surrogate, while the step's true derivative is 0 — checked
    in test_binary_step_straight_through.)"""
    if key == "binary_step(straight_through)":
        act = nv.activations.get("binary_step", straight_through=True)
        x = np.array([[-1.0, 0.5]], np.float32)
        assert np.all(act.forward(x + 1e-2) == act.forward(x - 1e-2))  # numerically flat
        return
    r = np.random.default_rng(4)
    x = (r.standard_normal((6, 10)) * 3).astype(np.float32)
    # Keep every point away from kinks so the difference quotient is smooth.
    for k in KINKS.get(base_name(key), []):
        near = np.abs(x - k) < 0.05
        x[near] += 0.1
    if key in ROWWISE:
        act = nv.activations.get(key)
    else:
        act, _ = run_act(key, x)
    w = r.standard_normal(act.forward(x).shape)

    def loss():
        return float((act.forward(x).astype(np.float64) * w).sum())

    analytic = act.backward(x, w.astype(np.float32))
    directional_grad_check(loss, [x], [analytic], eps=1e-2, trials=3, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("name", ["sigmoid", "relu", "elu", "softmax", "crelu", "gelu", "swish", "tanh"])
def test_backward_with_saved_output_is_the_same(name):
    """backward(x, dy, y=forward(x)) skips recomputing y and gives the same dx."""
    act = nv.activations.get(name)
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    y = act.forward(x)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(act.backward(x, dy, y=y), act.backward(x, dy))
    with pytest.raises(ValueError, match="y must have shape"):
        act.backward(x, dy, y=y[:, :3])


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_are_the_same_function(alias):
    x = wide_inputs()
    a, b = nv.activations.get(alias), nv.activations.get(ALIASES[alias])
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    dy = np.ones_like(x)
    np.testing.assert_array_equal(a.backward(x, dy), b.backward(x, dy))
    # ...and they all meet the oracle of their canonical name.
    ref = ORACLES[ALIASES[alias]]["f"](x.astype(np.float64))
    assert ulps(a.forward(x), ref).max() <= 4


def test_no_overflow_at_large_inputs():
    x = np.array([[-1000, -100, -88.8, 88.8, 100, 1000]], np.float32)
    for name in every_name():
        act = nv.activations.get(name)
        y = act.forward(x)
        dx = act.backward(x, np.ones_like(y))
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), name


# ---------------------------------------------------------------------------
# PyTorch as a second oracle.

def torch_functions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return torch, {
        "identity": lambda t: t,
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu,
        "leaky_relu": F.leaky_relu, "leaky_relu(alpha=0.2)": lambda t: F.leaky_relu(t, 0.2),
        "elu": F.elu, "elu(alpha=0.5)": lambda t: F.elu(t, 0.5), "selu": F.selu,
        "swish": F.silu, "swish(beta=2)": lambda t: t * torch.sigmoid(2 * t),
        "gelu": F.gelu, "gelu(tanh)": lambda t: F.gelu(t, approximate="tanh"),
        "softplus": F.softplus, "softplus(beta=2,threshold=10)": lambda t: F.softplus(t, 2.0, 10.0),
        "mish": F.mish, "hard_sigmoid": F.hardsigmoid, "hard_swish": F.hardswish, "relu6": F.relu6,
        "rrelu": lambda t: F.rrelu(t, training=False),
        "rrelu(0.1,0.3)": lambda t: F.rrelu(t, 0.1, 0.3, training=False),
        "softmax": lambda t: F.softmax(t, dim=1), "log_softmax": lambda t: F.log_softmax(t, dim=1),
        "crelu": lambda t: torch.cat([F.relu(t), F.relu(-t)], dim=1),
    }


@pytest.mark.parametrize("key", sorted(set(ORACLES) | set(ROWWISE)))
def test_against_torch(key):
    torch, fns = torch_functions()
    if key not in fns:
        # binary_step: torch.heaviside has no autograd; covered by the numpy oracle.
        assert base_name(key) == "binary_step"
        return
    x = (np.random.default_rng(5).standard_normal((32, 16)) * 4).astype(np.float32)
    x[0, :6] = [-100, 100, -1000, 1000, 0, -30]
    act = nv.activations.get(key) if key in ROWWISE else run_act(key, x)[0]
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = fns[key](t)
    dy = np.random.default_rng(6).standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.tensor(dy, dtype=torch.float64))
    # PyTorch's gelu computes x/2 (1 + erf(x/sqrt 2)) (or 1 + tanh), which
    # cancels even in float64 for x < -6: its tail values carry an absolute
    # error of ~1e-16 * |x|, so they are compared with that absolute slack.
    atol = 1e-13 if base_name(key) == "gelu" else 1e-30
    np.testing.assert_allclose(act.forward(x), out.detach().numpy(), rtol=2e-6, atol=atol)
    np.testing.assert_allclose(act.backward(x, dy), t.grad.numpy(), rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------
# Special behaviours.

def test_rrelu_training_slopes_are_random_seeded_and_in_range():
    act = nv.activations.get("rrelu", lower=0.1, upper=0.3)
    x = -np.ones((64, 50), np.float32)
    y1 = act.forward(x, training=True, seed=7, step=3)
    y2 = act.forward(x, training=True, seed=7, step=3)
    np.testing.assert_array_equal(y1, y2)  # deterministic for a key
    slopes = -y1
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3
    assert slopes.std() > 0.03  # fresh slope per element, ~U(0.1, 0.3): std 0.058
    assert abs(slopes.mean() - 0.2) < 0.01
    y3 = act.forward(x, training=True, seed=7, step=4)
    assert not np.array_equal(y1, y3)  # a new step draws new slopes
    # Positive inputs pass unchanged; backward uses the same slopes as forward.
    xp = np.abs(np.random.default_rng(0).standard_normal((4, 5))).astype(np.float32) + 0.1
    np.testing.assert_array_equal(act.forward(xp, training=True, seed=7, step=3), xp)
    dx = act.backward(x, np.ones_like(x), training=True, seed=7, step=3)
    np.testing.assert_array_equal(dx, slopes)
    # Evaluation: the mean slope.
    np.testing.assert_allclose(act.forward(x), -0.2 * np.ones_like(x), rtol=1e-7)


def test_rrelu_training_does_not_depend_on_threads():
    act = nv.activations.get("rrelu")
    x = np.random.default_rng(1).standard_normal((512, 600)).astype(np.float32)
    old = nv.get_num_threads()
    try:
        nv.set_num_threads(1)
        a = act.forward(x, training=True, seed=3, step=1)
        nv.set_num_threads(2)
        b = act.forward(x, training=True, seed=3, step=1)
    finally:
        nv.set_num_threads(old)
    np.testing.assert_array_equal(a, b)


def test_binary_step_straight_through():
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]], np.float32)
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    plain = nv.activations.get("binary_step")
    st = nv.activations.get("binary_step", straight_through=True)
    np.testing.assert_array_equal(plain.forward(x), [[0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(st.forward(x), plain.forward(x))
    np.testing.assert_array_equal(plain.backward(x, dy), np.zeros_like(dy))
    np.testing.assert_array_equal(st.backward(x, dy), dy)


def test_crelu_doubles_width_through_a_model():
    nv.manual_seed(0)
    model = nv.Sequential([nv.layers.Dense(5, activation="crelu"), nv.layers.Dense(3)], input_dim=4)
    assert model.layers[0].output_dim == 10
    assert model.layers[1].kernel.shape == (10, 3)
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    W1, b1, W2, b2 = [p.value.astype(np.float64) for p in model.parameters()]
    z = x @ W1 + b1
    h = np.concatenate([np.maximum(z, 0), np.maximum(-z, 0)], axis=1)
    np.testing.assert_allclose(model.predict(x), h @ W2 + b2, rtol=1e-5, atol=1e-5)
    # Gradients through the doubled width are right.
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    loss = nv.losses.get("cross_entropy")
    for p in model.parameters():
        p.grad[...] = 0
    model.backward(loss.backward(model.forward(x, training=True), y))
    directional_grad_check(lambda: loss.forward(model.predict(x), y), [p.value for p in model.parameters()],
                           [p.grad.copy() for p in model.parameters()], eps=1e-2, atol=2e-4)
    # An Activation layer doubles too.
    m2 = nv.Sequential([nv.layers.Dense(5), nv.layers.Activation("crelu"), nv.layers.Dense(2)], input_dim=4)
    assert [l.output_dim for l in m2.layers] == [5, 10, 2]


# ---------------------------------------------------------------------------
# Every activation trains a model (loss falls) through fit.

def tiny_classification(n=96, d=6, classes=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    y = np.argmax(x @ r.standard_normal((d, classes)), axis=1).astype(np.int64)
    return x, y


TRAIN_SPECS = [("identity", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}), ("leaky_relu", {}),
               ("elu", {}), ("selu", {}), ("crelu", {}), ("swish", {}), ("binary_step", {"straight_through": True}),
               ("softmax", {}), ("log_softmax", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
               ("softplus", {}), ("mish", {}), ("hard_sigmoid", {}), ("hard_swish", {}), ("relu6", {}),
               ("rrelu", {})]


@pytest.mark.parametrize("name,params", TRAIN_SPECS, ids=[f"{n}{p or ''}" for n, p in TRAIN_SPECS])
def test_each_activation_trains_through_fit(name, params):
    x, y = tiny_classification()
    nv.manual_seed(3)
    model = nv.Sequential([nv.layers.Dense(16), nv.layers.Activation(name, **params), nv.layers.Dense(3)],
                          input_dim=x.shape[1])
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    hist = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("layer", ["prelu", "prelu_per_feature", "swish", "swish_fixed", "maxout"])
def test_learnable_activation_layers_train_through_fit(layer):
    x, y = tiny_classification()
    nv.manual_seed(3)
    mid = {"prelu": lambda: nv.layers.PReLU(), "prelu_per_feature": lambda: nv.layers.PReLU(shared=False),
           "swish": lambda: nv.layers.Swish(), "swish_fixed": lambda: nv.layers.Swish(learnable=False),
           "maxout": lambda: nv.layers.Maxout(8, 3)}[layer]()
    layers = [nv.layers.Dense(16), mid, nv.layers.Dense(3)] if layer != "maxout" else [mid, nv.layers.Dense(3)]
    model = nv.Sequential(layers, input_dim=x.shape[1])
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    hist = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]


# ---------------------------------------------------------------------------
# PReLU

def test_prelu_forward_backward_against_numpy():
    x = np.random.default_rng(0).standard_normal((9, 5)).astype(np.float32)
    for shared in (True, False):
        layer = nv.layers.PReLU(init=0.25, shared=shared)
        y = layer.forward(x)
        a = layer.alpha.value
        assert a.shape == ((1,) if shared else (5,))
        np.testing.assert_array_equal(a, 0.25)
        a = np.random.default_rng(1).uniform(0.05, 0.5, a.shape).astype(np.float32)
        layer.alpha.value = a
        y = layer.forward(x)
        np.testing.assert_allclose(y, np.where(x > 0, x, a * x), rtol=1e-7)
        dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
        layer.alpha.grad[...] = 0
        dx = layer.backward(dy)
        np.testing.assert_allclose(dx, np.where(x > 0, dy, a * dy), rtol=1e-7)
        ga = np.where(x > 0, 0.0, x * dy.astype(np.float64))
        ga = ga.sum() if shared else ga.sum(axis=0)
        np.testing.assert_allclose(layer.alpha.grad, np.reshape(ga, a.shape), rtol=1e-5, atol=1e-6)


def test_prelu_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    for shared in (True, False):
        tl = torch.nn.PReLU(num_parameters=1 if shared else 4, init=0.25)
        tx = torch.tensor(x, requires_grad=True)
        out = tl(tx)
        out.backward(torch.tensor(dy))
        layer = nv.layers.PReLU(shared=shared)
        np.testing.assert_allclose(layer.forward(x), out.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(layer.alpha.grad, tl.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def model_grad_check(model, x, y, eps=1e-2, atol=2e-4, rtol=2e-2):
    loss = nv.losses.get("cross_entropy")
    for p in model.parameters():
        p.grad[...] = 0
    model.backward(loss.backward(model.forward(x, training=True), y))
    params = model.parameters()
    directional_grad_check(lambda: loss.forward(model.predict(x), y), [p.value for p in params],
                           [p.grad.copy() for p in params], eps=eps, atol=atol, rtol=rtol, trials=4)


@pytest.mark.parametrize("shared", [True, False])
def test_prelu_numeric_gradient_in_a_model(shared):
    x, y = tiny_classification(n=12)
    nv.manual_seed(1)
    model = nv.Sequential([nv.layers.Dense(7), nv.layers.PReLU(init=0.1, shared=shared), nv.layers.Dense(3)],
                          input_dim=x.shape[1])
    model_grad_check(model, x, y)


def test_prelu_and_swish_parameters_learn():
    x, y = tiny_classification(n=128)
    nv.manual_seed(2)
    model = nv.Sequential([nv.layers.Dense(16), nv.layers.PReLU(shared=False), nv.layers.Dense(16),
                           nv.layers.Swish(beta=1.0), nv.layers.Dense(3)], input_dim=x.shape[1])
    prelu, swish = model.layers[1], model.layers[3]
    a0, b0 = prelu.alpha.numpy(), swish.beta.numpy()
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    hist = model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]
    assert np.abs(prelu.alpha.value - a0).max() > 1e-2
    assert abs(float(swish.beta.value[0] - b0[0])) > 1e-2
    # Frozen: the slopes stay.
    prelu.trainable = False
    a1 = prelu.alpha.numpy()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    np.testing.assert_array_equal(prelu.alpha.value, a1)


# ---------------------------------------------------------------------------
# Swish layer

def test_swish_layer_against_numpy_and_beta_gradient():
    x = (np.random.default_rng(0).standard_normal((20, 6)) * 4).astype(np.float32)
    x[0, :4] = [-100, 100, -1000, 1000]
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    layer = nv.layers.Swish(beta=1.5)
    x64, b = x.astype(np.float64), 1.5
    y = layer.forward(x)
    np.testing.assert_allclose(y, x64 * sig(b * x64), rtol=4e-7, atol=1e-37)
    layer.beta.grad[...] = 0
    dx = layer.backward(dy)
    s = sig(b * x64)
    # swish' crosses zero near beta x = -1.28, so the comparison has an absolute part.
    np.testing.assert_allclose(dx, dy * (s + b * x64 * s * sig(-b * x64)), rtol=2e-6, atol=1e-7)
    gb = (dy * x64 ** 2 * s * sig(-b * x64)).sum()
    np.testing.assert_allclose(layer.beta.grad[0], gb, rtol=1e-5)
    # learnable=False: same function, no parameter.
    fixed = nv.layers.Swish(beta=1.5, learnable=False)
    np.testing.assert_array_equal(fixed.forward(x), y)
    assert fixed.parameters() == []
    np.testing.assert_array_equal(fixed.backward(dy), dx)
    # And the same as the swish activation.
    np.testing.assert_array_equal(nv.activations.get("swish", beta=1.5).forward(x), y)


def test_swish_beta_gradient_matches_torch():
    torch = pytest.importorskip("torch")
    x = (np.random.default_rng(0).standard_normal((32, 5)) * 3).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = tx * torch.sigmoid(beta * tx)
    out.backward(torch.tensor(dy, dtype=torch.float64))
    layer = nv.layers.Swish(beta=0.7)
    np.testing.assert_allclose(layer.forward(x), out.detach().numpy(), rtol=2e-6, atol=1e-7)
    layer.beta.grad[...] = 0
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(layer.beta.grad[0], beta.grad.item(), rtol=1e-5)


def test_swish_numeric_gradient_in_a_model():
    x, y = tiny_classification(n=12)
    nv.manual_seed(1)
    model = nv.Sequential([nv.layers.Dense(7), nv.layers.Swish(beta=0.8), nv.layers.Dense(3)],
                          input_dim=x.shape[1])
    model_grad_check(model, x, y)


def test_swish_beta_gradient_does_not_depend_on_threads():
    x = np.random.default_rng(0).standard_normal((300, 1000)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    grads = []
    old = nv.get_num_threads()
    try:
        for t in (1, 2):
            nv.set_num_threads(t)
            layer = nv.layers.Swish()
            layer.forward(x)
            layer.beta.grad[...] = 0
            layer.backward(dy)
            grads.append(layer.beta.grad.copy())
    finally:
        nv.set_num_threads(old)
    np.testing.assert_array_equal(grads[0], grads[1])


# ---------------------------------------------------------------------------
# Maxout

def test_maxout_forward_backward_against_numpy():
    nv.manual_seed(0)
    layer = nv.layers.Maxout(4, pieces=3)
    x = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.shape == (10, 4)
    W, b = layer.kernel.value.astype(np.float64), layer.bias.value.astype(np.float64)
    assert W.shape == (5, 12) and b.shape == (12,)
    z = (x @ W + b).reshape(10, 4, 3)  # unit j owns columns 3j .. 3j+2
    np.testing.assert_allclose(y, z.max(axis=2), rtol=1e-5, atol=1e-6)
    dy = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    for p in layer.parameters():
        p.grad[...] = 0
    dx = layer.backward(dy)
    # The gradient goes to the arg-max piece only.
    dz = np.zeros_like(z)
    arg = z.argmax(axis=2)
    np.put_along_axis(dz, arg[..., None], dy[..., None], axis=2)
    dz = dz.reshape(10, 12)
    np.testing.assert_allclose(layer.kernel.grad, x.T.astype(np.float64) @ dz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.bias.grad, dz.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dz @ W.T, rtol=1e-5, atol=1e-5)


def test_maxout_with_a_zero_piece_is_relu():
    """pieces=2 with the second piece's weights and bias at zero: max(z, 0) = relu(z).
    Zeroing that piece's gradient before each update keeps it at zero (frozen),
    and the model then trains exactly like Dense + ReLU."""
    nv.manual_seed(5)
    x, y = tiny_classification(n=64, d=5)
    maxout = nv.layers.Maxout(6, pieces=2)
    m1 = nv.Sequential([maxout, nv.layers.Dense(3)], input_dim=5)
    W, b = maxout.kernel.value, maxout.bias.value
    W[:, 1::2] = 0.0
    b[:] = np.linspace(-0.2, 0.2, 12, dtype=np.float32)
    b[1::2] = 0.0
    m2 = nv.Sequential([nv.layers.Dense(6, activation="relu"), nv.layers.Dense(3)], input_dim=5)
    m2.layers[0].kernel.value = W[:, 0::2]
    m2.layers[0].bias.value = b[0::2]
    m2.layers[1].kernel.value = m1.layers[1].kernel.value
    m2.layers[1].bias.value = m1.layers[1].bias.value
    np.testing.assert_allclose(maxout.forward(x), np.maximum(x @ W[:, 0::2] + b[0::2], 0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m1.predict(x), m2.predict(x), rtol=1e-6, atol=1e-6)
    # A few manual SGD steps with the zero piece frozen: identical trajectories.
    loss = nv.losses.get("cross_entropy")
    opt1 = nv.optimizers.SGD(m1.parameters(), lr=0.1)
    opt2 = nv.optimizers.SGD(m2.parameters(), lr=0.1)
    for _ in range(5):
        for m, opt in ((m1, opt1), (m2, opt2)):
            opt.zero_grad()
            m.backward(loss.backward(m.forward(x, training=True), y))
        maxout.kernel.grad[:, 1::2] = 0.0
        maxout.bias.grad[1::2] = 0.0
        np.testing.assert_allclose(maxout.kernel.grad[:, 0::2], m2.layers[0].kernel.grad, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maxout.bias.grad[0::2], m2.layers[0].bias.grad, rtol=1e-5, atol=1e-6)
        opt1.step()
        opt2.step()
    assert np.all(maxout.kernel.value[:, 1::2] == 0)
    np.testing.assert_allclose(m1.predict(x), m2.predict(x), rtol=1e-5, atol=1e-5)


def test_maxout_numeric_gradient_in_a_model():
    x, y = tiny_classification(n=12)
    nv.manual_seed(1)
    model = nv.Sequential([nv.layers.Maxout(5, 3), nv.layers.Dense(3)], input_dim=x.shape[1])
    model_grad_check(model, x, y)


def test_maxout_width_regularizer_and_constraint():
    nv.manual_seed(0)
    layer = nv.layers.Maxout(4, 2, kernel_initializer="he_normal", kernel_regularizer=nv.regularizers.L2(0.1),
                             kernel_constraint=nv.constraints.MaxNorm(0.5))
    model = nv.Sequential([layer, nv.layers.Dense(2)], input_dim=3)
    assert layer.output_dim == 4 and model.layers[1].kernel.shape == (4, 2)
    expected = 0.1 * float((layer.kernel.value.astype(np.float64) ** 2).sum())
    assert model._net.regularize(False) == pytest.approx(expected + 0.0, rel=1e-5)
    x, y = tiny_classification(n=32, d=3, classes=2)
    model.compile(optimizer=nv.optimizers.SGD(lr=0.5), loss="cross_entropy")
    model.fit(x, y, epochs=2, verbose=0)
    assert np.linalg.norm(layer.kernel.value, axis=0).max() <= 0.5 + 1e-5


def test_learnable_layers_save_and_load(tmp_path):
    x, y = tiny_classification(n=32)
    nv.manual_seed(4)
    model = nv.Sequential([nv.layers.Maxout(8, 2), nv.layers.PReLU(shared=False, init=0.1),
                           nv.layers.Swish(beta=2.0), nv.layers.Swish(0.5, learnable=False),
                           nv.layers.Dense(3)], input_dim=x.shape[1])
    model.compile(optimizer="adam", loss="cross_entropy")
    model.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "m.nerve"
    model.save(path)
    loaded = nv.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == ["Maxout", "PReLU", "Swish", "Swish", "Dense"]
    assert loaded.layers[0].pieces == 2 and loaded.layers[1].shared is False
    assert loaded.layers[3].learnable is False
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.layers[2].beta.value, model.layers[2].beta.value)


@pytest.mark.parametrize("bad", [lambda: nv.layers.Maxout(0, 2), lambda: nv.layers.Maxout(3, 0),
                                 lambda: nv.layers.Maxout(3, 1.5), lambda: nv.layers.PReLU(init=float("nan")),
                                 lambda: nv.layers.Swish(beta="x")])
def test_learnable_layer_bad_arguments(bad):
    with pytest.raises(ValueError):
        bad()


def test_learnable_layers_deterministic_across_threads():
    x, y = tiny_classification(n=256, d=20)
    results = []
    old = nv.get_num_threads()
    try:
        for t in (1, 2):
            nv.set_num_threads(t)
            nv.manual_seed(9)
            m = nv.Sequential([nv.layers.Maxout(64, 3), nv.layers.PReLU(), nv.layers.Dense(64),
                               nv.layers.Swish(), nv.layers.Dense(3)], input_dim=20)
            m.compile(optimizer="adam", loss="cross_entropy")
            m.fit(x, y, epochs=2, batch_size=128, verbose=0, shuffle=False)
            results.append(np.concatenate([p.value.ravel() for p in m.parameters()]))
    finally:
        nv.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])


def test_learnable_layers_allocate_nothing_per_step():
    x, y = tiny_classification(n=64)
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Maxout(8, 3), nv.layers.PReLU(shared=False), nv.layers.Dense(8),
                       nv.layers.Swish(), nv.layers.PReLU(), nv.layers.Dense(3)], input_dim=x.shape[1])
    m.compile(optimizer="adam", loss="cross_entropy")
    m.train_step(x[:32], y[:32])
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = nv._core.alloc_count()
    for _ in range(5):
        m.train_step(x[:32], y[:32])
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert nv._core.alloc_count() == before


def test_rrelu_training_backward_slopes_at_edge_inputs():
    """Backward reads a negative element's slope as y / x; zeros, subnormal
    products and infinities fall back to the generator: the slope is the
    drawn one everywhere (within 1 ulp)."""
    act = nv.activations.get("rrelu")
    shape = (4, 64)
    slopes = -act.forward(-np.ones(shape, np.float32), training=True, seed=5, step=2)
    r = np.random.default_rng(0)
    x = -r.uniform(0.5, 3.0, shape).astype(np.float32)
    x[0, 3], x[1, 40], x[2, 7], x[3, 0] = 0.0, -1e-44, -np.inf, -1e-30
    x[3, 33] = 2.0  # positive: gradient passes
    dy = r.standard_normal(shape).astype(np.float32)
    y = act.forward(x, training=True, seed=5, step=2)
    dx = act.backward(x, dy, training=True, seed=5, step=2, y=y)
    expect = np.where(x > 0, dy, dy * slopes)
    np.testing.assert_allclose(dx, expect, rtol=2.5e-7, atol=0)
    assert dx[3, 33] == dy[3, 33]


def test_prelu_wide_and_maxout_without_bias():
    """More than one 256-column block of PReLU slopes; Maxout with use_bias=False."""
    r = np.random.default_rng(7)
    x = r.standard_normal((33, 600)).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    layer = nv.layers.PReLU(shared=False)
    layer.forward(x)
    a = r.uniform(0.0, 0.5, 600).astype(np.float32)
    layer.alpha.value = a
    layer.alpha.grad[...] = 0
    layer.forward(x)
    np.testing.assert_allclose(layer.backward(dy), np.where(x > 0, dy, a * dy), rtol=1e-7)
    ga = np.where(x > 0, 0.0, x.astype(np.float64) * dy).sum(axis=0)
    np.testing.assert_allclose(layer.alpha.grad, ga, rtol=1e-5, atol=1e-5)
    nv.manual_seed(0)
    m = nv.layers.Maxout(3, pieces=4, use_bias=False)
    y = m.forward(x[:, :5])
    assert [p.name for p in m.parameters()] == ["kernel"]
    np.testing.assert_allclose(y, (x[:, :5] @ m.kernel.value).reshape(33, 3, 4).max(axis=2), rtol=1e-5, atol=1e-6)


def test_prelu_and_maxout_gradients_do_not_depend_on_threads():
    """Large enough that the kernels split work across threads."""
    r = np.random.default_rng(3)
    x = r.standard_normal((300, 1000)).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    xm = r.standard_normal((1000, 16)).astype(np.float32)
    dym = r.standard_normal((1000, 256)).astype(np.float32)
    runs = []
    old = nv.get_num_threads()
    try:
        for t in (1, 2):
            nv.set_num_threads(t)
            out = []
            for shared in (True, False):
                layer = nv.layers.PReLU(shared=shared)
                layer.forward(x)
                layer.alpha.grad[...] = 0
                out += [layer.backward(dy), layer.alpha.grad.copy()]
            nv.manual_seed(0)
            m = nv.layers.Maxout(256, 4)
            out.append(m.forward(xm))
            out.append(m.backward(dym))
            out += [m.kernel.grad.copy(), m.bias.grad.copy()]
            runs.append(out)
    finally:
        nv.set_num_threads(old)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("row", nv.activations.names(), ids=lambda r: r["name"])
def test_the_derivative_reads_what_the_table_says(row):
    # The one fact per activation (C++ unit's kFrom): output-based
    # derivatives read y alone, input-based ones x alone. Garbage in the
    # other operand must not change dx.
    act = nv.activations.get(row["name"])
    r = np.random.default_rng(5)
    x = r.standard_normal((6, 9)).astype(np.float32)
    y = act.forward(x)
    dy = r.standard_normal(y.shape).astype(np.float32)
    dx = act.backward(x, dy, y=y)
    garbage = np.full_like(x, np.nan)
    if row["grad_from_output"]:
        np.testing.assert_array_equal(act.backward(garbage, dy, y=y), dx)
    else:
        np.testing.assert_array_equal(act.backward(x, dy, y=np.full_like(y, np.nan)), dx)
    assert act._spec.passes_gradient == (row["name"] == "identity")
