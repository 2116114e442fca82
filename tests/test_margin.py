"""The large-margin softmax family: CosineDense with cosface / arcface, and the
LargeMarginDense + large_margin_softmax and SphereDense + sphereface pairs.

Oracles are numpy (float64) written here from the papers' formulas (angles
through arccos, cos(mθ) directly, not the Chebyshev form the kernels use);
gradients are checked against central differences of those float64 oracles,
and, when torch is installed, against torch autograd as a second oracle.
"""
import numpy as np
import pytest

import nerve as nv
from nerve import _core

from conftest import directional_grad_check, rng

EPS = 1e-12


# ---------------------------------------------------------------------------
# numpy oracles

def normalize(a, axis):
    return a / np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), EPS)


def cosines(x, w):
    return normalize(x, 1) @ normalize(w, 0)


def ce(z, y):
    """Mean softmax cross-entropy of logits z (float64) and its gradient."""
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    loss = float(np.mean(lse - z[np.arange(len(y)), y]))
    p = np.exp(z - lse[:, None])
    p[np.arange(len(y)), y] -= 1.0
    return loss, p / len(y)


def cosface_oracle(c, y, s, m):
    z = s * np.asarray(c, np.float64)
    z[np.arange(len(y)), y] -= s * m
    loss, g = ce(z, y)
    return loss, s * g


ARC_CLAMP = 1e-7


def arcface_oracle(c, y, s, m):
    """Target logit s cos(θ + m) while θ + m < π, else s (cos θ − m sin m)
    (insightface, easy_margin=False); d/dc = sin(θ + m) / sin θ (resp. 1)."""
    c = np.asarray(c, np.float64)
    rows = np.arange(len(y))
    cy = np.clip(c[rows, y], -1 + ARC_CLAMP, 1 - ARC_CLAMP)
    theta = np.arccos(cy)
    inside = theta + m < np.pi
    phi = np.where(inside, np.cos(theta + m), cy - m * np.sin(m))
    dphi = np.where(inside, np.sin(theta + m) / np.sin(theta), 1.0)
    z = s * c
    z[rows, y] = s * phi
    loss, g = ce(z, y)
    g = s * g
    g[rows, y] *= dphi
    return loss, g


def psi_oracle(theta, m):
    """ψ(θ) = (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m] (Liu et al. 2016, eq. 6)."""
    k = np.minimum(np.floor(theta * m / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2.0 * k


def lambda_oracle(it, base, gamma, power, lambda_min):
    return max(lambda_min, base * (1.0 + gamma * it) ** (-power))


def margin_logits_oracle(x, w, y, m, lam, sphere):
    """Training logits of LargeMarginDense (sphere=False) / SphereDense."""
    v = normalize(w, 0) if sphere else w
    f = x @ v
    rows = np.arange(len(y))
    r = np.linalg.norm(x, axis=1) * np.linalg.norm(v[:, y], axis=0)
    c = np.clip(f[rows, y] / r, -1.0, 1.0)
    theta = np.arccos(c)
    f = f.copy()
    f[rows, y] = r * (lam * c + psi_oracle(theta, m)) / (1.0 + lam)
    return f


def margin_loss_oracle(x, w, y, m, lam, sphere):
    return ce(margin_logits_oracle(x, w, y, m, lam, sphere), y)[0]


def numeric_grad(f, a, h=1e-6):
    """Central differences of f (float64) with respect to every entry of a."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        up = f()
        a[idx] = old - h
        down = f()
        a[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def close(got, want, rtol=1e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} x scale {scale:.3g}"


# ---------------------------------------------------------------------------
# CosineDense

def test_cosine_dense_forward_backward_against_numpy():
    r = rng(1)
    x = r.standard_normal((7, 5)).astype(np.float32)
    x[3] = 0.0  # a zero row: normalize's eps guard (output 0, gradient dy V^T / eps)
    layer = nv.layers.CosineDense(4)
    y = layer.forward(x, training=True)
    w = layer.kernel.value.astype(np.float64)
    close(y, cosines(x.astype(np.float64), w), 1e-6)
    assert np.all(y[3] == 0.0)
    dy = r.standard_normal(y.shape).astype(np.float32)
    layer.kernel.grad[...] = 0.0
    dx = layer.backward(dy)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    live = [i for i in range(7) if i != 3]

    def f_x():
        return float((cosines(x64, w)[live] * dy64[live]).sum())

    def f_w():
        return float((cosines(x64, w) * dy64).sum())

    close(dx[live], numeric_grad(f_x, x64)[live], 1e-4)
    close(dx[3], dy64[3] @ normalize(w, 0).T / EPS, 1e-5)  # torch's gradient through clamp_min(eps)
    close(layer.kernel.grad, numeric_grad(f_w, w), 1e-4)


def test_cosine_dense_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    r = rng(2)
    x = r.standard_normal((6, 5)).astype(np.float32)
    layer = nv.layers.CosineDense(3)
    y = layer.forward(x, training=True)
    dy = r.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(layer.kernel.value, dtype=torch.float64, requires_grad=True)
    ty = F.normalize(tx, dim=1, eps=EPS) @ F.normalize(tw, dim=0, eps=EPS)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, ty.detach().numpy(), 1e-6)
    close(dx, tx.grad.numpy(), 1e-5)
    close(layer.kernel.grad, tw.grad.numpy(), 1e-5)


# ---------------------------------------------------------------------------
# cosface / arcface on cos θ

def _cos_batch(seed, rows=9, cols=5):
    c = rng(seed).uniform(-0.99, 0.99, (rows, cols)).astype(np.float32)
    y = rng(seed + 1).integers(0, cols, rows)
    return c, y


@pytest.mark.parametrize("s,m", [(30.0, 0.35), (4.0, 0.2), (10.0, 0.0)])
def test_cosface_against_numpy(s, m):
    c, y = _cos_batch(3)
    loss = nv.losses.get("cosface", scale=s, margin=m)
    value, grad = loss.forward_backward(c, y)
    want, want_g = cosface_oracle(c, y, s, m)
    assert value == pytest.approx(want, rel=1e-9)
    close(grad, want_g, 1e-5)
    p = c.copy()
    directional_grad_check(lambda: loss.forward(p, y), [p], [grad], eps=1e-3, rtol=2e-2)


@pytest.mark.parametrize("s,m", [(64.0, 0.5), (8.0, 0.3), (5.0, 1.2)])
def test_arcface_against_numpy(s, m):
    c, y = _cos_batch(4)
    # Both branches: θ_y + m below and beyond π (cos θ_y near -1), and cos θ_y near 1.
    c[0, y[0]] = -0.995
    c[1, y[1]] = 0.9999
    c[2, y[2]] = np.cos(np.pi - m) - 0.01
    loss = nv.losses.get("arcface", scale=s, margin=m)
    value, grad = loss.forward_backward(c, y)
    want, want_g = arcface_oracle(c, y, s, m)
    assert value == pytest.approx(want, rel=1e-9)
    close(grad, want_g, 1e-5)
    p = c.copy()
    directional_grad_check(lambda: loss.forward(p, y), [p], [grad], eps=1e-4, rtol=2e-2)


def test_arcface_fallback_is_decreasing():
    """phi(θ) = cos(θ + m) up to θ = π − m, then cos θ − m sin m: decreasing in
    θ on [0, π] (cos(θ + m) alone turns back up past π − m, the reason for the
    fallback). At the switch insightface's fallback steps down by
    1 − cos m − m sin m (it is not continuous); the step keeps phi decreasing."""
    m, s = 0.5, 1.0
    loss = nv.losses.get("arcface", scale=s, margin=m)
    theta = np.linspace(0.01, np.pi - 0.01, 801)
    # Two classes, the other column at cos = 0: loss = softplus(0 − s phi), so phi = -log(e^L − 1).
    c = np.zeros((len(theta), 2), np.float32)
    c[:, 0] = np.cos(theta)
    y = np.zeros(len(theta), np.int64)
    per_row = np.array([loss.forward(c[i:i + 1], y[i:i + 1]) for i in range(len(theta))])
    phi = -np.log(np.expm1(per_row))
    assert np.all(np.diff(phi) < 0)
    step = np.argmax(np.abs(np.diff(phi)))
    assert theta[step] < np.pi - m <= theta[step + 1]
    close(phi, np.where(theta + m < np.pi, np.cos(theta + m), np.cos(theta) - m * np.sin(m)), 1e-5)


def test_arcface_gradient_finite_at_cos_one():
    c = np.array([[1.0, 0.2, -1.0], [-1.0, 0.3, 1.0]], np.float32)
    y = np.array([0, 0])
    value, grad = nv.losses.get("arcface").forward_backward(c, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Outside the clamp [-1 + 1e-7, 1 - 1e-7] the label column's gradient is 0 (torch.clamp's).
    assert grad[0, 0] == 0.0 and grad[1, 0] == 0.0


def test_cosface_arcface_against_torch():
    torch = pytest.importorskip("torch")
    c, y = _cos_batch(5)
    for name, s, m in [("cosface", 30.0, 0.35), ("arcface", 64.0, 0.5), ("arcface", 16.0, 1.0)]:
        value, grad = nv.losses.get(name, scale=s, margin=m).forward_backward(c, y)
        tc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
        oh = torch.nn.functional.one_hot(torch.tensor(y), c.shape[1]).bool()
        if name == "cosface":
            logits = s * (tc - m * oh.double())
        else:  # insightface ArcMarginProduct(easy_margin=False), cos clamped as the reference code
            cc = tc.clamp(-1 + ARC_CLAMP, 1 - ARC_CLAMP)
            sine = torch.sqrt(1.0 - cc * cc)
            phi = cc * np.cos(m) - sine * np.sin(m)
            phi = torch.where(cc > np.cos(np.pi - m), phi, cc - np.sin(np.pi - m) * m)
            logits = s * torch.where(oh, phi, tc)
        tl = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
        tl.backward()
        assert value == pytest.approx(tl.item(), rel=1e-9)
        close(grad, tc.grad.numpy(), 1e-5)


def test_margin_zero_is_scaled_cross_entropy():
    c, y = _cos_batch(6)
    ce_loss = nv.losses.get("cross_entropy")
    want, want_g = ce_loss.forward_backward(8.0 * c, y)
    for name in ("cosface", "arcface"):
        value, grad = nv.losses.get(name, scale=8.0, margin=0.0).forward_backward(c, y)
        assert value == pytest.approx(want, rel=1e-5)
        close(grad, 8.0 * want_g, 1e-4)


def test_cosine_model_gradients_through_the_layer():
    """cosface on CosineDense inside a model: d loss / d W and (through an
    identity Dense in front) d loss / d x against a float64 oracle."""
    r = rng(7)
    x = r.standard_normal((8, 4)).astype(np.float32)
    y = r.integers(0, 3, 8)
    model = nv.Sequential([nv.layers.Dense(4, use_bias=False), nv.layers.CosineDense(3)], input_dim=4)
    model.compile(optimizer="sgd", loss=nv.losses.get("arcface", scale=6.0, margin=0.4))
    model.layers[0].kernel.value = np.eye(4, dtype=np.float32)
    value, _ = model._net.compute_gradients(x, y, None, model.loss._spec)
    x64, w = x.astype(np.float64), model.layers[1].kernel.value.astype(np.float64)

    def f():
        return arcface_oracle(cosines(x64, w), y, 6.0, 0.4)[0]

    assert value == pytest.approx(f(), rel=1e-5)
    close(model.layers[1].kernel.grad, numeric_grad(f, w), 1e-3)
    # dW of the identity layer is x^T (d loss / d x).
    close(model.layers[0].kernel.grad, x64.T @ numeric_grad(f, x64), 1e-3)


# ---------------------------------------------------------------------------
# L-Softmax / SphereFace

def _margin_model(sphere, m, in_dim=4, units=3, seed=8, **lam):
    head = nv.layers.SphereDense(units) if sphere else nv.layers.LargeMarginDense(units)
    model = nv.Sequential([nv.layers.Dense(in_dim, use_bias=False), head], input_dim=in_dim)
    name = "sphereface" if sphere else "large_margin_softmax"
    model.compile(optimizer="sgd", loss=nv.losses.get(name, margin=m, **lam))
    model.layers[0].kernel.value = np.eye(in_dim, dtype=np.float32)
    head.kernel.value = rng(seed).standard_normal((in_dim, units)).astype(np.float32)
    return model


@pytest.mark.parametrize("sphere", [False, True])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_margin_pair_loss_and_gradients(sphere, m):
    r = rng(10 + m)
    x = r.standard_normal((9, 4)).astype(np.float32)
    y = r.integers(0, 3, 9)
    lam = dict(base=0.7, gamma=0.5, power=1.5, lambda_min=0.1)
    model = _margin_model(sphere, m, **lam)
    model._net.step = 3  # the 4th training step: iteration 4 of the authors' Caffe counter
    lam_now = lambda_oracle(4, **lam)
    assert _core.margin_lambda(model.loss._spec, 4) == pytest.approx(lam_now, rel=1e-12)
    value, _ = model._net.compute_gradients(x, y, None, model.loss._spec)
    x64, w = x.astype(np.float64), model.layers[1].kernel.value.astype(np.float64)

    def f():
        return margin_loss_oracle(x64, w, y, m, lam_now, sphere)

    assert value == pytest.approx(f(), rel=1e-5)
    close(model.layers[1].kernel.grad, numeric_grad(f, w), 2e-4)
    close(model.layers[0].kernel.grad, x64.T @ numeric_grad(f, x64), 2e-4)


@pytest.mark.parametrize("sphere", [False, True])
def test_margin_pair_against_torch(sphere):
    torch = pytest.importorskip("torch")
    r = rng(20)
    x = r.standard_normal((10, 4)).astype(np.float32)
    y = r.integers(0, 3, 10)
    model = _margin_model(sphere, 4, base=2.0, gamma=0.0, power=1.0, lambda_min=0.0)
    model._net.compute_gradients(x, y, None, model.loss._spec)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(model.layers[1].kernel.value, dtype=torch.float64, requires_grad=True)
    v = torch.nn.functional.normalize(tw, dim=0, eps=EPS) if sphere else tw
    f = tx @ v
    rows = torch.arange(10)
    ty = torch.tensor(y)
    r_ = tx.norm(dim=1) * v[:, ty].norm(dim=0)
    c = (f[rows, ty] / r_).clamp(-1, 1)
    theta = torch.acos(c)
    k = torch.clamp(torch.floor(theta * 4 / np.pi), max=3).detach()
    psi = (-1.0) ** k * torch.cos(4 * theta) - 2 * k
    fy = r_ * (2.0 * c + psi) / 3.0
    logits = f.clone()
    logits[rows, ty] = fy
    torch.nn.functional.cross_entropy(logits, ty).backward()
    close(model.layers[1].kernel.grad, tw.grad.numpy(), 1e-4)
    close(model.layers[0].kernel.grad, x.astype(np.float64).T @ tx.grad.numpy(), 1e-4)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_non_monotonic_region(m):
    """ψ over θ in (0, π), θ near π included: equal to the oracle and strictly
    decreasing (cos mθ alone turns back up past π/m), continuous at the kπ/m joints."""
    theta = np.concatenate([np.linspace(0.02, np.pi - 0.02, 600), np.pi - np.array([1e-3, 1e-4])])
    rows = len(theta)
    # 2 inputs, 2 classes: W = [[1, 0], [0, 0]] so ‖W_0‖ = 1 and the other logit is 0;
    # x = (cos θ, sin θ): f_0' = ψ(θ) with λ = 0, read back from loss = softplus(−f_0').
    x = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    y = np.zeros(rows, np.int64)
    for sphere in (False, True):
        head = nv.layers.SphereDense(2) if sphere else nv.layers.LargeMarginDense(2)
        model = nv.Sequential([head], input_dim=2)
        model.compile(optimizer="sgd", loss=nv.losses.get("sphereface" if sphere else "large_margin_softmax",
                                                          margin=m, base=0.0, lambda_min=0.0))
        head.kernel.value = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
        per_row = np.array([model._net.compute_gradients(x[i:i + 1], y[i:i + 1], None, model.loss._spec)[0]
                            for i in range(rows)])
        psi = -np.log(np.expm1(per_row))
        c64 = np.clip(x[:, 0].astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1), -1, 1)
        close(psi, psi_oracle(np.arccos(c64), m), 2e-5)
        assert np.all(np.diff(psi[:600]) < 0)
        assert psi[-1] == pytest.approx(1 - 2 * m, abs=1e-4)
        assert np.max(np.abs(np.diff(psi[:600]))) < 0.1


def test_margin_one_or_huge_lambda_is_plain_softmax():
    r = rng(30)
    x = r.standard_normal((12, 4)).astype(np.float32)
    y = r.integers(0, 3, 12)
    plain = nv.Sequential([nv.layers.Dense(4, use_bias=False), nv.layers.Dense(3, use_bias=False)], input_dim=4)
    plain.compile(optimizer="sgd", loss="cross_entropy")
    for sphere in (False, True):
        for m, lam in [(1, {}), (4, dict(base=1e9, lambda_min=1e9))]:
            model = _margin_model(sphere, m, **lam)
            w = model.layers[1].kernel.value.astype(np.float64)
            plain.layers[0].kernel.value = np.eye(4, dtype=np.float32)
            plain.layers[1].kernel.value = (normalize(w, 0) if sphere else w).astype(np.float32)
            value, _ = model._net.compute_gradients(x, y, None, model.loss._spec)
            want, _ = plain._net.compute_gradients(x, y, None, plain.loss._spec)
            assert value == pytest.approx(want, rel=1e-5)
            close(model.layers[0].kernel.grad, plain.layers[0].kernel.grad, 1e-4)
            if not sphere:
                close(model.layers[1].kernel.grad, plain.layers[1].kernel.grad, 1e-4)


def test_lambda_schedule_defaults():
    spec = nv.losses.get("sphereface")._spec
    for it in (0, 1, 10, 1000, 10 ** 6):
        assert _core.margin_lambda(spec, it) == pytest.approx(lambda_oracle(it, 1000.0, 0.12, 1.0, 5.0))
    spec = nv.losses.get("large_margin_softmax")._spec
    for it in (0, 100, 10 ** 5):
        assert _core.margin_lambda(spec, it) == pytest.approx(lambda_oracle(it, 1000.0, 2.5e-5, 35.0, 0.0))


def test_predict_gives_plain_logits():
    r = rng(31)
    x = r.standard_normal((5, 4)).astype(np.float32)
    for head, loss, want in [
        (nv.layers.CosineDense(3), "cosface", lambda w: cosines(x.astype(np.float64), w)),
        (nv.layers.LargeMarginDense(3), "large_margin_softmax", lambda w: x.astype(np.float64) @ w),
        (nv.layers.SphereDense(3), "sphereface", lambda w: x.astype(np.float64) @ normalize(w, 0)),
    ]:
        model = nv.Sequential([head], input_dim=4)
        model.compile(loss=loss)
        close(model.predict(x), want(head.kernel.value.astype(np.float64)), 1e-5)
        close(model.forward(x, training=True), want(head.kernel.value.astype(np.float64)), 1e-5)


# ---------------------------------------------------------------------------
# Training, saving, errors

def _blobs(n=600, classes=5, dim=8, seed=0):
    r = rng(seed)
    centers = r.standard_normal((classes, dim)) * 3.0
    y = np.arange(n) % classes
    x = (centers[y] + r.standard_normal((n, dim))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("head,loss", [("CosineDense", "cosface"), ("CosineDense", "arcface"),
                                       ("LargeMarginDense", "large_margin_softmax"),
                                       ("SphereDense", "sphereface")])
def test_trains_blobs(head, loss, tmp_path):
    nv.manual_seed(3)
    x, y = _blobs()
    model = nv.Sequential([nv.layers.Dense(16, activation="relu"), getattr(nv.layers, head)(5)], input_dim=8)
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss=loss, metrics=["accuracy"])
    model.fit(x[:500], y[:500], epochs=15, batch_size=32, verbose=0)
    assert model.evaluate(x[500:], y[500:])["accuracy"] >= 0.9
    assert np.mean(np.argmax(model.predict(x[500:]), axis=1) == y[500:]) >= 0.9
    proba = model.predict_proba(x[500:])
    close(proba.sum(axis=1), np.ones(100), 1e-5)
    # Save / load round trip: same outputs, same loss and parameters.
    path = tmp_path / "m.nerve"
    model.save(path)
    again = nv.load_model(path)
    assert type(again.layers[-1]) is type(model.layers[-1])
    np.testing.assert_array_equal(again.predict(x[500:]), model.predict(x[500:]))
    assert again.loss.get_config() == model.loss.get_config()


def test_onnx_export_matches_predict():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x, y = _blobs(n=64)
    for head in (nv.layers.CosineDense(5), nv.layers.LargeMarginDense(5), nv.layers.SphereDense(5)):
        model = nv.Sequential([nv.layers.Dense(6, activation="tanh"), head], input_dim=8)
        model.compile(loss=nv.layers.MARGIN_LOSS_OF_LAYER.get(type(head).__name__, "cosface"))
        model.fit(x, y, epochs=1, verbose=0)
        for opset in (17, 18):
            proto = nv.onnx.to_onnx(model, opset=opset)
            sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            out = sess.run(None, {"input": x})[0]
            close(out, model.predict(x), 1e-5)


def test_bad_input():
    x, y = _blobs(n=40)
    cos = nv.Sequential([nv.layers.CosineDense(5)], input_dim=8).compile(loss="cosface")
    with pytest.raises(ValueError, match="integer"):
        cos.fit(x, y.astype(np.float32), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="outside"):
        cos.train_step(x, y + 1)
    with pytest.raises(ValueError, match="outside"):
        nv.losses.get("arcface").forward(np.zeros((2, 3), np.float32), np.array([0, 3]))
    for bad in (0, -1, 2.5, 17, float("nan")):
        for name in ("large_margin_softmax", "sphereface"):
            with pytest.raises(ValueError, match="margin must be an integer"):
                nv.losses.get(name, margin=bad)
    for name in ("cosface", "arcface"):
        for bad in (0, -3.0, float("inf")):
            with pytest.raises(ValueError, match="scale must be > 0"):
                nv.losses.get(name, scale=bad)
        with pytest.raises(ValueError, match="margin must be"):
            nv.losses.get(name, margin=-0.1)
    with pytest.raises(ValueError, match="margin must be in"):
        nv.losses.get("arcface", margin=3.5)
    with pytest.raises(ValueError, match="base must be"):
        nv.losses.get("sphereface", base=-1.0)
    # cosface on a non-CosineDense output: refused at compile, and on values that are not cosines.
    with pytest.raises(ValueError, match="needs a CosineDense output layer"):
        nv.Sequential([nv.layers.Dense(5)], input_dim=8).compile(loss="cosface")
    with pytest.raises(ValueError, match=r"cos θ in \[-1, 1\]"):
        nv.losses.get("cosface").forward(np.array([[2.0, 0.0]], np.float32), np.array([0]))
    with pytest.raises(ValueError, match="needs a SphereDense output layer"):
        nv.Sequential([nv.layers.LargeMarginDense(5)], input_dim=8).compile(loss="sphereface")
    with pytest.raises(ValueError, match="is trained with loss='large_margin_softmax'"):
        nv.Sequential([nv.layers.LargeMarginDense(5)], input_dim=8).compile(loss="cross_entropy")
    # The C++ step checks the pair too (a loss spec handed past compile).
    plain = nv.Sequential([nv.layers.Dense(5)], input_dim=8).compile(loss="cross_entropy")
    plain.build(8)
    with pytest.raises(ValueError, match="needs a LargeMarginDense output layer"):
        plain._net.compute_gradients(x, y, None, nv.losses.get("large_margin_softmax")._spec)
    for cls in (nv.layers.CosineDense, nv.layers.LargeMarginDense, nv.layers.SphereDense):
        with pytest.raises(ValueError, match="units must be a positive int"):
            cls(0)
    # Interop has no torch / Keras layer for these: a clear refusal.
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="CosineDense has no torch equivalent"):
        nv.interop.to_torch(cos)


def test_no_allocation_per_step():
    x, y = _blobs(n=64)
    for head, loss in [(nv.layers.CosineDense(5), "arcface"), (nv.layers.SphereDense(5), "sphereface"),
                       (nv.layers.LargeMarginDense(5), "large_margin_softmax")]:
        model = nv.Sequential([nv.layers.Dense(8), head], input_dim=8).compile(loss=loss)
        model.train_step(x[:32], y[:32])
        before = _core.alloc_count()
        for _ in range(3):
            model.train_step(x[:32], y[:32])
        assert _core.alloc_count() == before


@pytest.mark.parametrize("head,loss", [("CosineDense", "arcface"), ("LargeMarginDense", "large_margin_softmax"),
                                       ("SphereDense", "sphereface")])
def test_same_bits_for_any_thread_count_and_sample_weights(head, loss):
    x, y = _blobs(n=512, dim=64)
    w = rng(4).uniform(0.0, 2.0, 512).astype(np.float32)
    old = nv.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            nv.set_num_threads(threads)
            nv.manual_seed(5)
            model = nv.Sequential([nv.layers.Dense(256, activation="relu"), getattr(nv.layers, head)(5)],
                                  input_dim=64)
            model.compile(optimizer="adam", loss=loss)
            model.fit(x, y, epochs=2, batch_size=256, sample_weight=w, verbose=0)
            results.append(np.concatenate([p.value.ravel() for p in model.parameters()]))
    finally:
        nv.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])


def test_margin_head_after_a_recurrent_layer():
    r = rng(6)
    x = r.standard_normal((64, 5, 3)).astype(np.float32)
    y = (x[:, -1, 0] > 0).astype(np.int64)
    model = nv.Sequential([nv.layers.GRU(8), nv.layers.SphereDense(2)], input_dim=3)
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss=nv.losses.get("sphereface", base=1.0))
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert model.predict(x).shape == (64, 2)
    assert np.mean(np.argmax(model.predict(x), axis=1) == y) >= 0.85
