"""Every loss and parameter variant against float64 numpy formulas written
here (PyTorch's documented semantics, "mean" reduction), PyTorch as a second
oracle when installed, numeric gradients, metrics, errors and training."""
import numpy as np
import pytest

import nerve as nv
from conftest import directional_grad_check

N, C = 24, 5


def data(seed=0, rows=N, cols=C, scale=2.0):
    r = np.random.default_rng(seed)
    logits = (r.standard_normal((rows, cols)) * scale).astype(np.float32)
    labels = r.integers(0, cols, rows).astype(np.int64)
    probs = r.dirichlet(np.ones(cols), rows).astype(np.float32)
    reg = r.standard_normal((rows, cols)).astype(np.float32)
    return logits, labels, probs, reg


def log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------
# float64 oracles: loss(pred, target) -> mean value.

def mse(p, t):
    return ((p - t) ** 2).mean()


def mae(p, t):
    return np.abs(p - t).mean()


def huber(p, t, delta=1.0):
    d = np.abs(p - t)
    return np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)).mean()


def smooth_l1(p, t, beta=1.0):
    d = np.abs(p - t)
    if beta == 0:
        return d.mean()
    return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).mean()


def bce(p, t):
    with np.errstate(divide="ignore", invalid="ignore"):  # p just outside [0, 1] in numeric_grad
        lp, l1p = np.maximum(np.log(p), -100), np.maximum(np.log1p(-p), -100)
    return (-(t * lp + (1 - t) * l1p)).mean()


def bce_logits(x, t):
    return (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean()


def cross_entropy(x, target, weight=None, label_smoothing=0.0):
    """torch.nn.functional.cross_entropy: labels (with weight, mean divides by
    sum w_y; smoothing term weighted by w_c) or probability targets (mean over rows)."""
    lp = log_softmax(x)
    rows, cols = x.shape
    w = np.ones(cols) if weight is None else np.asarray(weight, np.float64)
    eps = label_smoothing
    if target.ndim == 1:
        wy = w[target]
        nll = -lp[np.arange(rows), target] * wy
        smooth = -(lp * w).sum(axis=1)
        per_row = (1 - eps) * nll + eps / cols * smooth
        return per_row.sum() / wy.sum()
    q = (1 - eps) * target + eps / cols
    return (-(q * w * lp).sum(axis=1)).mean()


def focal(x, y, gamma=2.0, alpha=None):
    lp = log_softmax(x)[np.arange(len(y)), y]
    p = np.exp(lp)
    a = 1.0 if alpha is None else alpha
    return (-a * (1 - p) ** gamma * lp).mean()


def distillation(x, teacher, y, temperature, alpha=0.5):
    T = temperature
    lq = log_softmax(teacher / T)
    lps = log_softmax(x / T)
    kl = (np.exp(lq) * (lq - lps)).sum(axis=1).mean()  # kl_div "batchmean"
    ce = -log_softmax(x)[np.arange(len(y)), y].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def margin_ce(c, y, s, phi):
    """Softmax CE of logits s c with the label's replaced by s phi(c_y)."""
    z = s * c.copy()
    rows = np.arange(len(y))
    z[rows, y] = s * phi(c[rows, y])
    return float(np.mean(-log_softmax(z)[rows, y]))


def cosface(c, y, s=30.0, m=0.35):
    return margin_ce(c, y, s, lambda cy: cy - m)


def arcface(c, y, s=64.0, m=0.5):
    """insightface easy_margin=False: cos(θ + m) while θ + m < π, else cos θ − m sin m."""
    def phi(cy):
        theta = np.arccos(np.clip(cy, -1 + 1e-7, 1 - 1e-7))
        return np.where(theta + m < np.pi, np.cos(theta + m), np.cos(theta) - m * np.sin(m))
    return margin_ce(c, y, s, phi)


def cases(rows=N, cols=C, scale=2.0):
    logits, labels, probs, reg = data(rows=rows, cols=cols, scale=scale)
    cosv = np.tanh(0.5 * logits).astype(np.float32)  # cosines, as a CosineDense gives
    reg_t = data(1, rows, cols)[3]
    p01 = (0.5 + 0.5 * np.tanh(0.5 * logits.astype(np.float64))).astype(np.float32)  # sigmoid
    p01.flat[:3] = [0.0, 1.0, 0.5]  # clamped logs at the ends
    t01 = (data(2, rows, cols)[3] > 0).astype(np.float32)
    t01.flat[:2] = [1.0, 0.0]  # log(0) clamped at -100
    teacher = data(3, rows, cols, scale)[0] * 1.5
    w = list(np.resize([1.0, 2.0, 0.5, 0.0, 3.0], cols))
    smallreg = reg_t.copy()
    smallreg[:, :2] = reg[:, :2] + 0.3  # differences inside smooth_l1/huber's quadratic zone
    c = [
        ("mse", {}, reg, reg_t, mse),
        ("mae", {}, reg, reg_t, mae),
        ("huber", {}, reg, smallreg, huber),
        ("huber(delta=0.5)", {"delta": 0.5}, reg, smallreg, lambda p, t: huber(p, t, 0.5)),
        ("smooth_l1", {}, reg, smallreg, smooth_l1),
        ("smooth_l1(beta=0.5)", {"beta": 0.5}, reg, smallreg, lambda p, t: smooth_l1(p, t, 0.5)),
        ("smooth_l1(beta=0)", {"beta": 0.0}, reg, smallreg, lambda p, t: smooth_l1(p, t, 0.0)),
        ("binary_cross_entropy", {}, p01, t01, bce),
        ("binary_cross_entropy(soft)", {}, p01, probs, bce),
        ("binary_cross_entropy_with_logits", {}, logits, t01, bce_logits),
        ("binary_cross_entropy_with_logits(soft)", {}, logits, probs, bce_logits),
        ("cross_entropy", {}, logits, labels, cross_entropy),
        ("cross_entropy(weight)", {"weight": w}, logits, labels, lambda x, y: cross_entropy(x, y, w)),
        ("cross_entropy(ls=0.1)", {"label_smoothing": 0.1}, logits, labels,
         lambda x, y: cross_entropy(x, y, label_smoothing=0.1)),
        ("cross_entropy(weight,ls=0.2)", {"weight": w, "label_smoothing": 0.2}, logits, labels,
         lambda x, y: cross_entropy(x, y, w, 0.2)),
        ("cross_entropy(probs)", {}, logits, probs, cross_entropy),
        ("cross_entropy(probs,weight,ls)", {"weight": w, "label_smoothing": 0.1}, logits, probs,
         lambda x, t: cross_entropy(x, t, w, 0.1)),
        ("focal", {}, logits, labels, focal),
        ("focal(gamma=0)", {"gamma": 0.0}, logits, labels, lambda x, y: focal(x, y, 0.0)),
        ("focal(gamma=0.5,alpha=0.25)", {"gamma": 0.5, "alpha": 0.25}, logits, labels,
         lambda x, y: focal(x, y, 0.5, 0.25)),
        ("distillation", {}, logits, (teacher, labels),
         lambda x, tt: distillation(x, tt[0], tt[1], nv.losses.DISTILLATION_TEMPERATURE)),
        ("distillation(T=4,alpha=0.9)", {"temperature": 4.0, "alpha": 0.9}, logits, (teacher, labels),
         lambda x, tt: distillation(x, tt[0], tt[1], 4.0, 0.9)),
        ("distillation(T=1,alpha=0)", {"temperature": 1.0, "alpha": 0.0}, logits, (teacher, labels),
         lambda x, tt: distillation(x, tt[0], tt[1], 1.0, 0.0)),
        # The margin losses (tests/test_margin.py has the rest): cosface / arcface on cos θ;
        # large_margin_softmax / sphereface on their own are CE (their layer applies the margin).
        ("cosface", {}, cosv, labels, cosface),
        ("cosface(s=4,m=0.2)", {"scale": 4.0, "margin": 0.2}, cosv, labels, lambda c, y: cosface(c, y, 4.0, 0.2)),
        ("arcface", {}, cosv, labels, arcface),
        ("arcface(s=8,m=1.2)", {"scale": 8.0, "margin": 1.2}, cosv, labels, lambda c, y: arcface(c, y, 8.0, 1.2)),
        ("large_margin_softmax", {}, logits, labels, cross_entropy),
        ("sphereface", {}, logits, labels, cross_entropy),
    ]
    return {k: v for k, *v in [(x[0], *x[1:]) for x in c]}


CASES = cases()
# The same cases at the edges of the kernels' vector lanes (4, 8 or 16 floats
# widened to double, by level) and of their chunks: rows of 37 classes (two
# whole 16-lane vectors and a partial one), one row of two, and 700 x 37 (several
# 4096-element chunks, each with a tail), with logits spread over +-800 (exp
# arguments far below the -708 flush) for the row-wise losses.
EDGE_SHAPES = {"3x37": (3, 37, 2.0), "1x2": (1, 2, 2.0), "700x37": (700, 37, 2.0), "4x37 spread": (4, 37, 400.0)}
EDGE_CASES = {shape: cases(*args) for shape, args in EDGE_SHAPES.items()}


def name_of(key):
    return key.split("(")[0]


def to64(t):
    if isinstance(t, tuple):
        return tuple(np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in t)
    a = np.asarray(t)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def numeric_grad(f, x, h=1e-6):
    """Central differences of a float64 function, element by element."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f(x)
        x[idx] = old - h
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def test_every_loss_in_the_registry_is_covered():
    covered = {name_of(k) for k in CASES}
    assert {row["name"] for row in nv.losses.names() if not row.get("metric")} == covered


@pytest.mark.parametrize("key", sorted(CASES))
def test_forward_matches_numpy(key):
    params, pred, target, oracle = CASES[key]
    loss = nv.losses.get(name_of(key), **params)
    np.testing.assert_allclose(loss.forward(pred, target), oracle(pred.astype(np.float64), to64(target)),
                               rtol=1e-6, atol=1e-9)


# (the spread means nothing to the losses on cosines or probabilities)
@pytest.mark.parametrize("key,shape", [(k, s) for s in sorted(EDGE_SHAPES) for k in sorted(CASES)
                                       if s != "4x37 spread" or name_of(k) not in ("cosface", "arcface",
                                                                                  "binary_cross_entropy")])
def test_forward_matches_numpy_at_lane_and_chunk_edges(key, shape):
    params, pred, target, oracle = EDGE_CASES[shape][key]
    loss = nv.losses.get(name_of(key), **params)
    np.testing.assert_allclose(loss.forward(pred, target), oracle(pred.astype(np.float64), to64(target)),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("key", sorted(CASES))
def test_gradient_at_lane_edges_matches_numeric_derivative(key):
    """3 rows of 37 classes: every gradient element, whole and partial vectors."""
    params, pred, target, oracle = EDGE_CASES["3x37"][key]
    loss = nv.losses.get(name_of(key), **params)
    g = loss.backward(pred, target)
    p = pred.astype(np.float64)
    keep = (p > 1e-3) & (p < 1 - 1e-3) if name_of(key) == "binary_cross_entropy" else np.ones(p.shape, bool)
    ref = numeric_grad(lambda q: oracle(q, to64(target)), p.copy())
    np.testing.assert_allclose(g[keep], ref[keep], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("key", sorted(CASES))
def test_gradient_matches_numeric_derivative_of_the_formula(key):
    """nerve's gradient against central differences of the float64 oracle
    (elements at the kinks of mae/huber/smooth_l1 are moved off them)."""
    params, pred, target, oracle = CASES[key]
    loss = nv.losses.get(name_of(key), **params)
    p = pred.astype(np.float64)[:8]
    t = tuple(a[:8] for a in to64(target)) if isinstance(target, tuple) else to64(target)[:8]
    p32 = p.astype(np.float32)
    g = loss.backward(p32, t if not isinstance(t, tuple) else (t[0].astype(np.float32), t[1]))
    if name_of(key) == "binary_cross_entropy":
        keep = (p > 1e-3) & (p < 1 - 1e-3)  # the clamped ends are tested separately
    else:
        keep = np.ones(p.shape, bool)
    ref = numeric_grad(lambda q: oracle(q, t), p.copy())
    np.testing.assert_allclose(g[keep], ref[keep], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("key", sorted(CASES))
def test_gradient_directional_check_of_nerve_forward(key):
    params, pred, target, _ = CASES[key]
    loss = nv.losses.get(name_of(key), **params)
    x = pred.copy()
    if name_of(key) == "binary_cross_entropy":
        x = np.clip(x, 0.05, 0.95)
    g = loss.backward(x, target)
    directional_grad_check(lambda: loss.forward(x, target), [x], [g], eps=1e-3, rtol=2e-2, atol=1e-4)


def test_bce_clamps_logs_like_torch():
    loss = nv.losses.get("binary_cross_entropy")
    p = np.array([[0.0, 1.0, 0.0, 1.0]], np.float32)
    t = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    # log(0) is clamped at -100: the two wrong certain predictions cost 100 each.
    assert loss.forward(p, t) == pytest.approx(200 / 4)
    assert np.all(np.isfinite(loss.backward(p, t)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss.forward(np.array([[1.5]], np.float32), np.array([[1.0]], np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss.forward(np.array([[0.5]], np.float32), np.array([[-0.1]], np.float32))


def test_focal_gamma_zero_is_cross_entropy():
    logits, labels, _, _ = data(4)
    f = nv.losses.get("focal", gamma=0.0)
    ce = nv.losses.get("cross_entropy")
    assert f.forward(logits, labels) == pytest.approx(ce.forward(logits, labels), rel=1e-7)
    np.testing.assert_allclose(f.backward(logits, labels), ce.backward(logits, labels), rtol=1e-5, atol=1e-8)


def test_distillation_default_temperature_is_documented():
    # Hinton et al. soften with T > 1; nerve's default and its docs agree.
    row = [r for r in nv.losses.names() if r["name"] == "distillation"][0]
    assert row["params"]["temperature"] == nv.losses.DISTILLATION_TEMPERATURE > 1.0
    assert f"temperature={nv.losses.DISTILLATION_TEMPERATURE:g}" in nv.losses.__doc__


def test_large_logits_stay_finite():
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0]], np.float32)
    y = np.array([0, 1])
    for name, params in [("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.1}), ("focal", {}),
                         ("distillation", {})]:
        loss = nv.losses.get(name, **params)
        target = (x[::-1].copy(), y) if name == "distillation" else y
        v, g = loss.forward(x, target), loss.backward(x, target)
        assert np.isfinite(v) and np.all(np.isfinite(g)), name
    assert nv.losses.get("cross_entropy").forward(x, y) == pytest.approx(2000 / 2)
    bl = nv.losses.get("binary_cross_entropy_with_logits")
    assert bl.forward(x, np.ones_like(x)) == pytest.approx(np.mean([0, 1000, np.log(2), 1000, 1000, 0]), rel=1e-6)


# ---------------------------------------------------------------------------
# PyTorch as a second oracle.

def torch_loss(key, torch):
    F = torch.nn.functional
    params = CASES[key][0]
    name = name_of(key)
    if name == "mse":
        return lambda x, t: F.mse_loss(x, t)
    if name == "mae":
        return lambda x, t: F.l1_loss(x, t)
    if name == "huber":
        return lambda x, t: F.huber_loss(x, t, delta=params.get("delta", 1.0))
    if name == "smooth_l1":
        return lambda x, t: F.smooth_l1_loss(x, t, beta=params.get("beta", 1.0))
    if name == "binary_cross_entropy":
        return lambda x, t: F.binary_cross_entropy(x, t)
    if name == "binary_cross_entropy_with_logits":
        return lambda x, t: F.binary_cross_entropy_with_logits(x, t)
    if name == "cross_entropy":
        w = params.get("weight")
        wt = None if w is None else torch.tensor(w, dtype=torch.float64)
        return lambda x, t: F.cross_entropy(x, t, weight=wt, label_smoothing=params.get("label_smoothing", 0.0))
    if name == "focal":
        g, a = params.get("gamma", 2.0), params.get("alpha", 1.0)

        def fl(x, t):
            lp = F.log_softmax(x, dim=1).gather(1, t[:, None])[:, 0]
            return (-a * (1 - lp.exp()) ** g * lp).mean()
        return fl
    if name == "distillation":
        T = params.get("temperature", nv.losses.DISTILLATION_TEMPERATURE)
        a = params.get("alpha", 0.5)

        def dl(x, tt):
            teacher, y = tt
            kl = F.kl_div(F.log_softmax(x / T, dim=1), F.log_softmax(teacher / T, dim=1),
                          reduction="batchmean", log_target=True)
            return a * T * T * kl + (1 - a) * F.cross_entropy(x, y)
        return dl
    if name in ("large_margin_softmax", "sphereface"):
        return lambda x, t: F.cross_entropy(x, t)
    if name in ("cosface", "arcface"):
        s = params.get("scale", 30.0 if name == "cosface" else 64.0)
        m = params.get("margin", 0.35 if name == "cosface" else 0.5)

        def margin(x, t):
            oh = F.one_hot(t, x.shape[1]).bool()
            if name == "cosface":
                phi = x - m
            else:  # insightface ArcMarginProduct(easy_margin=False)
                c = x.clamp(-1 + 1e-7, 1 - 1e-7)
                phi = c * np.cos(m) - torch.sqrt(1 - c * c) * np.sin(m)
                phi = torch.where(c > np.cos(np.pi - m), phi, c - np.sin(np.pi - m) * m)
            return F.cross_entropy(s * torch.where(oh, phi, x), t)
        return margin
    raise AssertionError(key)


@pytest.mark.parametrize("key", sorted(CASES))
def test_against_torch(key):
    torch = pytest.importorskip("torch")
    params, pred, target, _ = CASES[key]
    loss = nv.losses.get(name_of(key), **params)
    x = torch.tensor(pred, dtype=torch.float64, requires_grad=True)

    def tt(a):
        a = np.asarray(a)
        return torch.tensor(a, dtype=torch.float64) if a.dtype.kind == "f" else torch.tensor(a)
    t = tuple(tt(a) for a in target) if isinstance(target, tuple) else tt(target)
    value = torch_loss(key, torch)(x, t)
    value.backward()
    assert loss.forward(pred, target) == pytest.approx(value.item(), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(loss.backward(pred, target), x.grad.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Metrics.

def test_accuracy_and_zero_one():
    logits, labels, probs, _ = data(5, rows=40)
    acc = nv.losses.get("accuracy")
    zo = nv.losses.get("zero_one")
    expected = float((logits.argmax(1) == labels).mean())
    assert acc.forward(logits, labels) == pytest.approx(expected)
    assert zo.forward(logits, labels) == pytest.approx(1 - expected)
    # Probability / one-hot targets compare arg-maxes.
    assert acc.forward(logits, probs) == pytest.approx(float((logits.argmax(1) == probs.argmax(1)).mean()))
    # One column: pred > 0.5 against target > 0.5.
    p = np.array([[0.9], [0.2], [0.6], [0.4]], np.float32)
    t = np.array([[1.0], [0.0], [0.0], [1.0]], np.float32)
    assert acc.forward(p, t) == pytest.approx(0.5)
    assert zo.forward(p, t) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric"):
        acc.backward(logits, labels)
    with pytest.raises(ValueError, match="metric"):
        nv.Sequential([nv.layers.Dense(2)], input_dim=3).compile(loss="accuracy")


# ---------------------------------------------------------------------------
# Errors: expected vs given.

def test_shape_and_label_errors_name_expected_and_given():
    logits, labels, _, reg = data()
    with pytest.raises(ValueError, match=r"expected shape \(24, 5\).*got \(24, 4\)"):
        nv.losses.get("mse").forward(reg, reg[:, :4])
    with pytest.raises(ValueError, match=r"labels: expected shape \(24,\), got \(23,\)"):
        nv.losses.get("cross_entropy").forward(logits, labels[:23])
    bad = labels.copy()
    bad[3] = 5
    with pytest.raises(ValueError, match=r"label 5 at row 3 is outside \[0, 5\)"):
        nv.losses.get("cross_entropy").forward(logits, bad)
    with pytest.raises(ValueError, match="integer"):
        nv.losses.get("cross_entropy").forward(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"class weight has 3 entries but predictions have 5 columns"):
        nv.losses.get("cross_entropy", weight=[1, 1, 1]).forward(logits, labels)
    with pytest.raises(ValueError, match=r"teacher logits: expected shape \(24, 5\)"):
        nv.losses.get("distillation").forward(logits, (logits[:, :3], labels))
    with pytest.raises(ValueError, match="teacher_logits, labels"):
        nv.losses.get("distillation").forward(logits, labels)
    with pytest.raises(ValueError, match="integer class labels"):
        nv.losses.get("focal").forward(logits, logits)


@pytest.mark.parametrize("name,params,match", [
    ("huber", {"delta": 0.0}, "delta"), ("smooth_l1", {"beta": -1.0}, "beta"),
    ("cross_entropy", {"label_smoothing": 1.5}, "label_smoothing"), ("focal", {"gamma": -1.0}, "gamma"),
    ("focal", {"alpha": 2.0}, "alpha"), ("distillation", {"temperature": 0.0}, "temperature"),
    ("distillation", {"alpha": 1.5}, "alpha"), ("mse", {"delta": 1.0}, "unknown parameter"),
    ("mse", {"weight": [1.0]}, "weight"),
])
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        nv.losses.get(name, **params)


@pytest.mark.parametrize("typo,suggestion", [("cross_entropyy", "cross_entropy"), ("hubber", "huber"),
                                             ("smoothl1", "smooth_l1"), ("accuracyy", "accuracy"),
                                             ("binary_crosentropy", "binary_crossentropy"),
                                             ("mean_squared_eror", "mean_squared_error")])
def test_unknown_names_suggest_close_matches(typo, suggestion):
    with pytest.raises(ValueError, match=f"did you mean.*'{suggestion}'"):
        nv.losses.get(typo)


# ---------------------------------------------------------------------------
# Training through compile/fit with every loss.

def train_case(name):
    r = np.random.default_rng(0)
    x = r.standard_normal((96, 6)).astype(np.float32)
    w = r.standard_normal((6, 3))
    labels = np.argmax(x @ w, axis=1).astype(np.int64)
    if name in ("mse", "mae", "huber", "smooth_l1"):
        return x, (x @ w).astype(np.float32), None
    if name == "binary_cross_entropy":
        return x, (x @ w > 0).astype(np.float32), "sigmoid"
    if name == "binary_cross_entropy_with_logits":
        return x, (x @ w > 0).astype(np.float32), None
    if name == "distillation":
        teacher = (x @ w * 2).astype(np.float32)
        return x, (teacher, labels), None
    return x, labels, None


@pytest.mark.parametrize("name", ["mse", "mae", "huber", "smooth_l1", "binary_cross_entropy",
                                  "binary_cross_entropy_with_logits", "cross_entropy", "focal", "distillation"])
def test_every_loss_trains_through_fit(name):
    x, y, out_act = train_case(name)
    nv.manual_seed(1)
    model = nv.Sequential([nv.layers.Dense(16, activation="tanh"), nv.layers.Dense(3, activation=out_act)],
                          input_dim=6)
    metrics = ["accuracy"] if name in ("cross_entropy", "focal") else []
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss=name, metrics=metrics)
    hist = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0], hist.history["loss"]
    # compile(loss=...) also takes a configured loss object.
    model.compile(optimizer="sgd", loss=nv.losses.get(name))
    assert model.evaluate(x, y)["loss"] == pytest.approx(nv.losses.get(name).forward(model.predict(x), y), rel=1e-5)
    if metrics:
        assert hist.history["accuracy"][-1] > hist.history["accuracy"][0]


def test_weighted_and_smoothed_cross_entropy_in_compile():
    x, y, _ = train_case("cross_entropy")
    nv.manual_seed(1)
    model = nv.Sequential([nv.layers.Dense(3)], input_dim=6)
    loss = nv.losses.get("cross_entropy", weight=[1.0, 2.0, 0.5], label_smoothing=0.1)
    model.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss=loss)
    pred = model.predict(x[:32])
    before = loss.forward(pred, y[:32])
    step_loss = model.train_step(x[:32], y[:32])
    assert step_loss == pytest.approx(before, rel=1e-5)  # train_step reports the same loss
    hist = model.fit(x, y, epochs=10, verbose=0)
    assert hist.history["loss"][-1] < before


def test_registry_rows_come_from_the_loss_units():
    rows = nv._core.loss_registry()
    assert [r["name"] for r in rows][:3] == ["mse", "mae", "huber"]
    for r in rows:
        # weight= is accepted exactly where the table says so.
        if r["class_weight"]:
            nv.losses.get(r["name"], weight=[1.0, 2.0])
        else:
            with pytest.raises(ValueError, match="weight= is a parameter of cross_entropy only"):
                nv.losses.get(r["name"], weight=[1.0, 2.0])
    assert {r["name"] for r in rows if r["classification"]} == {"cross_entropy", "focal", "distillation", "cosface",
                                                                "arcface", "large_margin_softmax", "sphereface"}
