"""BatchNorm, Dropout, AlphaDropout, GaussianNoise and Residual: forward and
backward against numpy formulas (PyTorch's documented semantics), numeric
gradient checks, seeding and thread-count invariance, save/load, training."""
import numpy as np
import pytest

import nerve as nv
from conftest import directional_grad_check


def data(n=16, d=5, seed=0, loc=0.0, scale=1.0):
    r = np.random.default_rng(seed)
    return (loc + scale * r.standard_normal((n, d))).astype(np.float32)


def np_bn_train(x, g, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(0)
    var = x.var(0)  # biased, as PyTorch normalizes with
    return g * (x - mu) / np.sqrt(var + eps) + b, mu, var


def np_bn_backward(x, g, dy, eps):
    """dL/dx, dL/dγ, dL/dβ of y = γ x̂ + β, x̂ = (x − μ)/√(σ² + ε) (Ioffe & Szegedy, 2015, §3)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    n = x.shape[0]
    mu, var = x.mean(0), x.var(0)
    xhat = (x - mu) / np.sqrt(var + eps)
    dxhat = dy * g
    dvar = (dxhat * (x - mu) * -0.5 * (var + eps) ** -1.5).sum(0)
    dmu = (-dxhat / np.sqrt(var + eps)).sum(0) + dvar * (-2 * (x - mu)).mean(0)
    dx = dxhat / np.sqrt(var + eps) + dvar * 2 * (x - mu) / n + dmu / n
    return dx, (dy * xhat).sum(0), dy.sum(0)


# -- BatchNorm ---------------------------------------------------------------------


def test_batchnorm_training_forward_and_running_stats():
    bn = nv.layers.BatchNorm(momentum=0.3, eps=1e-3)
    rm, rv = np.zeros(5), np.ones(5)
    for step in range(3):
        x = data(seed=step, loc=2.0, scale=3.0)
        y = bn.forward(x, training=True)
        if step == 0:
            np.testing.assert_array_equal(bn.gamma.value, 1)
            np.testing.assert_array_equal(bn.beta.value, 0)
            bn.gamma.value[...] = np.linspace(0.5, 2, 5)
            bn.beta.value[...] = np.linspace(-1, 1, 5)
            y = bn.forward(x, training=True)  # a second training forward moves the stats again
            rm = 0.7 * rm + 0.3 * x.mean(0)
            rv = 0.7 * rv + 0.3 * x.astype(np.float64).var(0, ddof=1)
        expect, mu, var = np_bn_train(x, bn.gamma.value, bn.beta.value, 1e-3)
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
        rm = 0.7 * rm + 0.3 * mu
        rv = 0.7 * rv + 0.3 * x.astype(np.float64).var(0, ddof=1)  # unbiased for the running estimate
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-5)
    # Evaluation uses the running statistics and leaves them alone.
    x = data(seed=9)
    y = bn.forward(x, training=False)
    expect = bn.gamma.value * (x - rm) / np.sqrt(rv + 1e-3) + bn.beta.value
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5)


def test_batchnorm_large_offset_is_numerically_careful():
    # |mean| / std = 1e4: a one-pass E[x²] − E[x]² in float32 would lose every digit.
    x = data(n=64, d=3, loc=1e4, scale=1.0)
    bn = nv.layers.BatchNorm()
    y = bn.forward(x, training=True)
    expect, _, _ = np_bn_train(x, 1.0, 0.0, 1e-5)
    np.testing.assert_allclose(y, expect, atol=2e-3)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)


def test_batchnorm_backward_matches_formula_and_numeric():
    x = data(n=12, d=4, loc=1.0, scale=2.0)
    bn = nv.layers.BatchNorm(eps=1e-3)
    bn.build(4)
    bn.forward(x, training=True)  # binds the parameters
    bn.gamma.value[...] = [0.5, 1.5, -1.0, 2.0]
    bn.beta.value[...] = [0.1, 0.0, -0.2, 0.3]
    w = data(n=12, d=4, seed=5)
    for p in bn.parameters():
        p.grad[...] = 0
    bn.forward(x, training=True)
    dx = bn.backward(w)
    edx, eg, eb = np_bn_backward(x, bn.gamma.value.astype(np.float64), w, 1e-3)
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.gamma.grad, eg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.beta.grad, eb, rtol=1e-5, atol=1e-5)
    xv = x.copy()
    loss = lambda: float((bn.forward(xv, training=True).astype(np.float64) * w).sum())
    directional_grad_check(loss, [xv, bn.gamma.value, bn.beta.value], [dx, bn.gamma.grad.copy(),
                                                                         bn.beta.grad.copy()])


def test_batchnorm_eval_backward_is_affine():
    bn = nv.layers.BatchNorm()
    x = data(n=8, d=3)
    bn.forward(x, training=True)
    bn.gamma.value[...] = [2.0, -1.0, 0.5]
    for p in bn.parameters():
        p.grad[...] = 0
    xv = data(n=8, d=3, seed=3)
    w = data(n=8, d=3, seed=4)
    bn.forward(xv, training=False)
    dx = bn.backward(w)
    scale = bn.gamma.value / np.sqrt(bn.running_var + 1e-5)
    np.testing.assert_allclose(dx, w * scale, rtol=1e-6)
    xhat = (xv - bn.running_mean) / np.sqrt(bn.running_var + 1e-5)
    np.testing.assert_allclose(bn.gamma.grad, (w * xhat).sum(0), rtol=1e-5, atol=1e-6)


def test_batchnorm_against_torch():
    torch = pytest.importorskip("torch")
    x = data(n=20, d=6, loc=-1.0, scale=2.0)
    w = data(n=20, d=6, seed=2)
    bn = nv.layers.BatchNorm(momentum=0.2, eps=1e-4)
    tb = torch.nn.BatchNorm1d(6, momentum=0.2, eps=1e-4).double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = tb(xt)
    (yt * torch.tensor(w, dtype=torch.float64)).sum().backward()
    y = bn.forward(x, training=True)
    dx = bn.backward(w)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.gamma.grad, tb.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), rtol=1e-6)
    tb.eval()
    np.testing.assert_allclose(bn.forward(w, training=False), tb(torch.tensor(w, dtype=torch.float64)).detach(),
                               rtol=1e-5, atol=1e-5)


def test_batchnorm_batch_of_one_in_training_raises_and_changes_nothing():
    bn = nv.layers.BatchNorm()
    x1 = data(n=1, d=3)
    with pytest.raises(ValueError, match="more than 1 row"):
        bn.forward(x1, training=True)
    np.testing.assert_array_equal(bn.running_mean, 0)
    bn.forward(x1, training=False)  # fine in evaluation
    m = nv.Sequential([nv.layers.Dense(4), nv.layers.BatchNorm(), nv.layers.Dense(2)], input_dim=3)
    m.compile(optimizer="sgd", loss="cross_entropy")
    before = [p.numpy() for p in m.parameters()]
    with pytest.raises(ValueError, match="more than 1 row"):
        m.train_step(x1, np.array([1]))
    # fit refuses a last batch of one row before training anything.
    x5 = data(n=5, d=3)
    with pytest.raises(ValueError, match="more than 1 row"):
        m.fit(x5, np.array([0, 1, 0, 1, 0]), batch_size=2, verbose=0)
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.value, b)
    np.testing.assert_array_equal(m.layers[1].running_mean, 0)


@pytest.mark.parametrize("bad", [dict(momentum=1.5), dict(momentum=-0.1), dict(eps=0.0), dict(eps="x")])
def test_batchnorm_bad_arguments(bad):
    with pytest.raises(ValueError):
        nv.layers.BatchNorm(**bad)


def test_frozen_batchnorm_runs_in_inference_mode():
    x = data(n=64, d=6)
    y = (x[:, 0] > 0).astype(np.int64)
    m = nv.Sequential([nv.layers.BatchNorm(), nv.layers.Dense(2)], input_dim=6)
    bn = m.layers[0]
    bn.running_mean[...] = 0.5
    bn.running_var[...] = 2.0
    bn.trainable = False
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy")
    g0 = bn.gamma.numpy()
    m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    np.testing.assert_array_equal(bn.running_mean, 0.5)
    np.testing.assert_array_equal(bn.running_var, 2.0)
    np.testing.assert_array_equal(bn.gamma.value, g0)
    # ... and its training-mode forward is the evaluation formula.
    out = m.forward(x, training=True)
    np.testing.assert_allclose(out, m.predict(x), rtol=1e-6)
    # The same on its own.
    np.testing.assert_array_equal(bn.forward(x, training=True), bn.forward(x, training=False))
    np.testing.assert_array_equal(bn.running_mean, 0.5)


def _thread_runs(fn):
    old = nv.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            nv.set_num_threads(t)
            res.append(fn())
        return res
    finally:
        nv.set_num_threads(old)


def test_batchnorm_thread_count_invariant():
    # Large enough for several row chunks and two threads.
    x = data(n=1100, d=300, loc=0.5)
    w = data(n=1100, d=300, seed=1)

    def run():
        bn = nv.layers.BatchNorm()
        y = bn.forward(x, training=True)
        dx = bn.backward(w)
        return y, dx, bn.gamma.grad.copy(), bn.running_var.copy()

    a, b = _thread_runs(run)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# -- Dropout family ---------------------------------------------------------------


def test_dropout_inverted_scaling_and_expected_value():
    x = np.full((200, 50), 2.0, np.float32)
    d = nv.layers.Dropout(0.3)
    y = d.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.01  # 10,000 draws: 4.6 standard errors
    # Mean over many draws keeps the expected value.
    acc = np.zeros_like(x, dtype=np.float64)
    for _ in range(20):
        acc += d.forward(x, training=True)
    assert abs(acc.mean() / 20 - 2.0) < 0.01
    np.testing.assert_array_equal(d.forward(x, training=False), x)
    dx = d.backward(np.ones_like(x))  # backward of the last (evaluation) forward: identity
    np.testing.assert_array_equal(dx, 1.0)


def test_dropout_backward_uses_the_forward_mask():
    r = np.random.default_rng(0)
    x = r.uniform(1, 2, (30, 20)).astype(np.float32)
    d = nv.layers.Dropout(0.5)
    y = d.forward(x, training=True)
    dy = r.standard_normal(x.shape).astype(np.float32)
    dx = d.backward(dy)
    np.testing.assert_allclose(dx, np.where(y != 0, dy * 2.0, 0.0), rtol=1e-6)


def test_dropout_numeric_gradient_with_fixed_mask():
    core = nv.layers.Dropout(0.4)
    core.build(7)
    x = data(n=6, d=7)
    w = data(n=6, d=7, seed=3)
    f = lambda: float((core._core.forward_np(x, True, 11, 5).astype(np.float64) * w).sum())
    y = core._core.forward_np(x, True, 11, 5)
    dx = core._core.backward_np(x, y, w, True, 11, 5, True)
    directional_grad_check(f, [x], [dx])


def test_dropout_is_seeded_and_thread_invariant():
    x = np.ones((256, 300), np.float32)  # large enough for two threads

    def masks(seed):
        nv.manual_seed(seed)
        m = nv.Sequential([nv.layers.Dropout(0.5)], input_dim=300)
        return m.forward(x, training=True), m.forward(x, training=True)

    a1, a2 = masks(3)
    b1, b2 = masks(3)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)  # a new mask every step
    assert not np.array_equal(a1, masks(4)[0])
    t1, t2 = _thread_runs(lambda: masks(3)[0])
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(t1, a1)


@pytest.mark.parametrize("cls", [nv.layers.Dropout, nv.layers.AlphaDropout])
@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "a"])
def test_dropout_bad_rate(cls, rate):
    with pytest.raises(ValueError, match="rate"):
        cls(rate)


def test_alpha_dropout_formula_and_self_normalization():
    p = 0.2
    alpha = 1.7580993408473766
    a = 1 / np.sqrt((alpha ** 2 * p + 1) * (1 - p))
    x = data(n=400, d=250, seed=1)
    d = nv.layers.AlphaDropout(p)
    y = d.forward(x, training=True)
    kept = np.isclose(y, a * x + alpha * a * p, rtol=1e-5, atol=1e-6)
    dropped = np.isclose(y, -alpha * a * (1 - p), rtol=1e-6)
    assert np.all(kept | dropped)
    assert abs(dropped.mean() - p) < 0.005
    assert abs(y.mean()) < 0.01 and abs(y.var() - 1.0) < 0.02
    dy = data(n=400, d=250, seed=2)
    dx = d.backward(dy)
    # Where x happens to equal the dropped value the mask is ambiguous; such
    # points are measure-zero for Gaussian x.
    np.testing.assert_allclose(dx, np.where(kept & ~dropped, a * dy, np.where(dropped, 0.0, a * dy)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.forward(x, training=False), x)


def test_alpha_dropout_against_torch_statistics():
    torch = pytest.importorskip("torch")
    x = data(n=300, d=200, seed=5)
    torch.manual_seed(0)
    yt = torch.nn.functional.alpha_dropout(torch.tensor(x), p=0.3, training=True).numpy()
    y = nv.layers.AlphaDropout(0.3).forward(x, training=True)

    def mode(a):  # the value of dropped units and how often it occurs
        vals, counts = np.unique(np.round(a, 5), return_counts=True)
        return vals[counts.argmax()], counts.max() / a.size

    (vt, ft), (v, f) = mode(yt), mode(y)
    assert v == pytest.approx(vt, abs=1e-5) and f == pytest.approx(ft, abs=0.01)
    # Kept units: the same affine map of x.
    kt, k = np.round(yt, 5) != vt, np.round(y, 5) != v
    np.testing.assert_allclose(np.polyfit(x[kt], yt[kt], 1), np.polyfit(x[k], y[k], 1), rtol=1e-4)


def test_gaussian_noise_statistics_and_identity_backward():
    x = np.full((300, 200), 1.5, np.float32)
    g = nv.layers.GaussianNoise(0.4)
    y = g.forward(x, training=True)
    n = (y - x).astype(np.float64).ravel()
    assert abs(n.mean()) < 0.004 and abs(n.std() - 0.4) < 0.004  # 60,000 draws
    # Normal: 68.3% within one standard deviation, 95.4% within two, kurtosis 3.
    assert abs((np.abs(n) < 0.4).mean() - 0.6827) < 0.01
    assert abs((np.abs(n) < 0.8).mean() - 0.9545) < 0.005
    assert abs(((n / n.std()) ** 4).mean() - 3.0) < 0.1
    # Each of the four normals drawn from one random block is standard normal on its own.
    for k in range(4):
        part = n[k::4] / 0.4
        assert abs(part.mean()) < 0.02 and abs(part.std() - 1) < 0.02
    assert abs(np.corrcoef(n[0::4], n[1::4])[0, 1]) < 0.03  # the Box-Muller pair is uncorrelated
    np.testing.assert_array_equal(g.backward(np.ones_like(x)), 1.0)
    np.testing.assert_array_equal(g.forward(x, training=False), x)
    assert not np.array_equal(g.forward(x, training=True), y)
    with pytest.raises(ValueError, match="stddev"):
        nv.layers.GaussianNoise(-1.0)


def test_gaussian_noise_seeded():
    x = np.zeros((8, 300), np.float32)

    def draw():
        nv.manual_seed(5)
        return nv.Sequential([nv.layers.GaussianNoise(1.0)], input_dim=300).forward(x, training=True)

    a, b = _thread_runs(draw)
    np.testing.assert_array_equal(a, b)


# -- Residual -----------------------------------------------------------------------


def make_residual():
    return nv.layers.Residual([nv.layers.Dense(7, activation="tanh"), nv.layers.BatchNorm(),
                               nv.layers.Dense(5)])


def test_residual_forward_is_x_plus_f():
    r = make_residual()
    x = data(n=10, d=5)
    y = r.forward(x, training=False)
    f = x
    for layer in r.layers:
        f = layer.forward(f, training=False)
    np.testing.assert_allclose(y, x + f, rtol=1e-6, atol=1e-6)
    assert len(r.parameters()) == 6 and r.param_size() == 5 * 7 + 7 + 7 * 2 + 7 * 5 + 5


def test_residual_gradient_numeric():
    r = make_residual()
    x = data(n=10, d=5)
    w = data(n=10, d=5, seed=2)
    r.forward(x, training=True)
    for p in r.parameters():
        p.grad[...] = 0
    r.forward(x, training=True)
    dx = r.backward(w)
    grads = [p.grad.copy() for p in r.parameters()]
    xv = x.copy()
    loss = lambda: float((r.forward(xv, training=True).astype(np.float64) * w).sum())
    directional_grad_check(loss, [xv] + [p.value for p in r.parameters()], [dx] + grads)


def test_residual_shape_errors():
    with pytest.raises(ValueError, match="map 5 features to 5"):
        nv.Sequential([nv.layers.Residual([nv.layers.Dense(4)])], input_dim=5)
    with pytest.raises(ValueError, match="non-empty"):
        nv.layers.Residual([])
    with pytest.raises(ValueError, match="nv.layers"):
        nv.layers.Residual(["dense"])


def test_residual_in_model_trains_and_freezes():
    x = data(n=128, d=6)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    m = nv.Sequential([nv.layers.Dense(16, activation="relu"),
                       nv.layers.Residual([nv.layers.Dense(16, activation="relu"), nv.layers.Dense(16)]),
                       nv.layers.Dense(2)], input_dim=6)
    assert len(m.parameters()) == 8
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    hist = m.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    before_sub1 = m.layers[1].layers[1].kernel.numpy()
    res = m.layers[1]
    # A frozen sub-layer of a trainable block stays put (no update, not even weight decay).
    res.layers[0].trainable = False
    frozen = [p.numpy() for p in res.layers[0].parameters()]
    m.compile(optimizer=nv.optimizers.AdamW(lr=1e-2, weight_decay=0.1), loss="cross_entropy")
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for p, b in zip(res.layers[0].parameters(), frozen):
        np.testing.assert_array_equal(p.value, b)
    assert not np.array_equal(res.layers[1].kernel.value, before_sub1)
    res.trainable = False
    assert all(not l.trainable for l in res.layers)
    before = [p.numpy() for p in res.parameters()]
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for p, b in zip(res.parameters(), before):
        np.testing.assert_array_equal(p.value, b)


# -- models -------------------------------------------------------------------------


def test_model_with_batchnorm_dropout_saves_and_loads(tmp_path):
    x = data(n=100, d=8)
    y = (x.sum(1) > 0).astype(np.int64)
    m = nv.Sequential([nv.layers.Dense(16, activation="elu", kernel_initializer="he_normal"),
                       nv.layers.BatchNorm(), nv.layers.Dropout(0.3), nv.layers.GaussianNoise(0.1),
                       nv.layers.Residual([nv.layers.Dense(16, activation="selu"), nv.layers.AlphaDropout(0.1),
                                           nv.layers.BatchNorm(momentum=0.2)]),
                       nv.layers.Dense(2)], input_dim=8)
    m.compile(optimizer="adam", loss="cross_entropy")
    m.fit(x, y, epochs=3, batch_size=20, verbose=0)
    assert len(m.buffers()) == 6 and not np.all(m.layers[1].running_mean == 0)
    path = tmp_path / "m.nerve"
    m.save(path)
    m2 = nv.load_model(path)
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    for a, b in zip(m.buffers(), m2.buffers()):
        np.testing.assert_array_equal(a, b)
    assert m2.layers[4].layers[2].momentum == 0.2 and m2.layers[2].rate == 0.3
    # Training continues identically (same seed, step, optimizer state and masks).
    m.fit(x, y, epochs=1, batch_size=20, verbose=0, seed=1, shuffle=False)
    m2.fit(x, y, epochs=1, batch_size=20, verbose=0, seed=1, shuffle=False)
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))


@pytest.mark.parametrize("layer", [lambda: nv.layers.BatchNorm(), lambda: nv.layers.Dropout(0.2),
                                   lambda: nv.layers.AlphaDropout(0.05), lambda: nv.layers.GaussianNoise(0.1),
                                   lambda: nv.layers.Residual([nv.layers.Dense(32, activation="relu"),
                                                               nv.layers.Dense(32)])])
def test_each_layer_trains_through_fit(layer):
    x, y = nv.datasets.load_digits()
    x, y = x[:600], y[:600]
    m = nv.Sequential([nv.layers.Dense(32, activation="relu"), layer(), nv.layers.Dense(10)], input_dim=64)
    m.compile(optimizer=nv.optimizers.Adam(lr=3e-3), loss="cross_entropy", metrics=["accuracy"])
    hist = m.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    assert m.evaluate(x, y)["accuracy"] > 0.85


def test_no_allocation_per_step_with_new_layers():
    x = data(n=64, d=8)
    y = (x[:, 0] > 0).astype(np.int64)
    m = nv.Sequential([nv.layers.Dense(16), nv.layers.BatchNorm(), nv.layers.Dropout(0.5),
                       nv.layers.Residual([nv.layers.Dense(16), nv.layers.BatchNorm()]),
                       nv.layers.Dense(2)], input_dim=8)
    m.compile(optimizer="adam", loss="cross_entropy")
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = nv._core.alloc_count()
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert nv._core.alloc_count() == before


def test_training_with_new_layers_is_thread_count_invariant():
    x = data(n=1024, d=32, seed=3)
    y = (x[:, 0] > 0).astype(np.int64)

    def run():
        nv.manual_seed(11)
        m = nv.Sequential([nv.layers.GaussianNoise(0.1), nv.layers.Dense(1024, activation="elu"),
                           nv.layers.BatchNorm(), nv.layers.Dropout(0.3),
                           nv.layers.Residual([nv.layers.Dense(1024, activation="selu"), nv.layers.AlphaDropout(0.1)]),
                           nv.layers.Dense(2)], input_dim=32)
        m.compile(optimizer="adam", loss="cross_entropy")
        m.fit(x, y, epochs=1, batch_size=512, verbose=0, seed=0)
        return np.concatenate([p.value.ravel() for p in m.parameters()] + [b for b in m.buffers()])

    a, b = _thread_runs(run)
    np.testing.assert_array_equal(a, b)


def _philox4x32(key, hi, lo):
    """Philox4x32-10 (Salmon et al., SC'11) in numpy: 4 words per 64-bit counter lo (vector)."""
    M = np.uint64(0xFFFFFFFF)
    c0, c1 = lo & M, lo >> np.uint64(32)
    c2 = np.full_like(lo, hi & 0xFFFFFFFF)
    c3 = np.full_like(lo, hi >> 32)
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & M, (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & M
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1)


def _mix_seed(seed, tag):
    """SplitMix64 finaliser of seed + golden·(tag + 1), as nerve's rng.hpp."""
    m = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15 * (tag + 1)) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


@pytest.mark.parametrize("n", [7, 1000, 70001])  # scalar tail only; vector path + tail; several pieces
def test_dropout_mask_is_the_documented_philox_draw(n):
    d = nv.layers.Dropout(0.35)
    d.build(n)
    d._core.stream = 12345
    x = np.ones((1, n), np.float32)
    y = d._core.forward_np(x, True, 777, 42)[0]
    words = _philox4x32(_mix_seed(777, 12345), 42, np.arange((n + 3) // 4, dtype=np.uint64)).reshape(-1)[:n]
    u = (words >> np.uint64(8)).astype(np.float64) / 2 ** 24
    keep = u >= np.float32(0.35)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_allclose(y[keep], np.float32(1 / 0.65), rtol=1e-7)


def test_train_step_equals_manual_loop_with_batchnorm_and_dropout():
    x = data(n=64, d=8, seed=2)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def make():
        nv.manual_seed(21)
        m = nv.Sequential([nv.layers.Dense(16, activation="elu"), nv.layers.BatchNorm(), nv.layers.Dropout(0.4),
                           nv.layers.Residual([nv.layers.Dense(16, activation="selu"), nv.layers.AlphaDropout(0.2)]),
                           nv.layers.GaussianNoise(0.2), nv.layers.Dense(2)], input_dim=8)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
        return m

    a, b = make(), make()
    lf = nv.losses.get("cross_entropy")
    for step in range(8):
        xb, yb = x[step % 4 * 16:(step % 4 + 1) * 16], y[step % 4 * 16:(step % 4 + 1) * 16]
        la = a.train_step(xb, yb)
        out = b.forward(xb, training=True)
        b.backward(lf.backward(out, yb))
        b.optimizer.step()
        b.optimizer.zero_grad()
        assert la == pytest.approx(lf.forward(out, yb), rel=1e-6)
    for pa, pb in zip(a.parameters() + a.buffers(), b.parameters() + b.buffers()):
        np.testing.assert_array_equal(getattr(pa, "value", pa), getattr(pb, "value", pb))


def test_batch_norm_momentum_none_is_the_cumulative_average():
    """PyTorch's momentum=None: running statistics = mean over the batches seen."""
    r = np.random.default_rng(7)
    batches = [r.standard_normal((8, 5)).astype(np.float32) * (i + 1) + i for i in range(4)]
    bn = nv.layers.BatchNorm(momentum=None)
    for b in batches:
        bn.forward(b, training=True)
    mean = np.mean([b.astype(np.float64).mean(axis=0) for b in batches], axis=0)
    var = np.mean([b.astype(np.float64).var(axis=0, ddof=1) for b in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-5)
    assert bn.buffers()[2][0] == 4  # num_batches_tracked
    again = nv.layers.BatchNorm.from_config(bn.get_config())
    assert again.momentum is None
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm1d(5, momentum=None)
    for b in batches:
        tb(torch.from_numpy(b))
    np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), rtol=1e-5)
