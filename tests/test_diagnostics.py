"""nv.diagnostics.layer_stats against a numpy forward/backward written here,
and the promise that it changes nothing."""
import numpy as np
import pytest

import nerve as nv


def setup(seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((50, 6)).astype(np.float32)
    y = r.integers(0, 3, size=50).astype(np.int64)
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(8, activation="tanh"), nv.layers.Dense(7, activation="relu"),
                       nv.layers.Dense(5, activation="sigmoid"), nv.layers.Dense(3)], input_dim=6)
    m.compile(optimizer="sgd", loss="cross_entropy")
    return m, x, y


def numpy_reference(m, x, y):
    """Forward and backward in float64 numpy: outputs, dL/d output and dL/dW per layer."""
    Ws = [(l.kernel.value.astype(np.float64), l.bias.value.astype(np.float64)) for l in m.layers]
    acts = [np.tanh, lambda z: np.maximum(z, 0), lambda z: 1 / (1 + np.exp(-z)), lambda z: z]
    dacts = [lambda z, a: 1 - a * a, lambda z, a: (z > 0).astype(float), lambda z, a: a * (1 - a),
             lambda z, a: np.ones_like(z)]
    h, hs, zs, outs = x.astype(np.float64), [], [], []
    for (W, b), f in zip(Ws, acts):
        hs.append(h)
        z = h @ W + b
        h = f(z)
        zs.append(z)
        outs.append(h)
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    out_grads, w_grads = [None] * 4, [None] * 4
    for i in range(3, -1, -1):
        out_grads[i] = d
        dz = d * dacts[i](zs[i], outs[i])
        w_grads[i] = hs[i].T @ dz
        d = dz @ Ws[i][0].T
    return outs, out_grads, w_grads, [W for W, _ in Ws]


def test_layer_stats_against_numpy():
    m, x, y = setup()
    # make some ReLU units dead: a large negative bias kills them for every row
    m.layers[1].bias.value[:3] = -100.0
    stats = nv.diagnostics.layer_stats(m, x, y)
    outs, out_grads, w_grads, Ws = numpy_reference(m, x, y)
    assert [s["index"] for s in stats] == [0, 1, 2, 3]
    for s, o, og, wg, W in zip(stats, outs, out_grads, w_grads, Ws):
        assert s["act_mean"] == pytest.approx(o.mean(), rel=1e-4, abs=1e-6)
        assert s["act_std"] == pytest.approx(o.std(), rel=1e-4)
        assert s["out_grad_mean"] == pytest.approx(og.mean(), rel=1e-3, abs=1e-8)
        assert s["out_grad_std"] == pytest.approx(og.std(), rel=1e-3)
        assert s["grad_mean"] == pytest.approx(wg.mean(), rel=1e-3, abs=1e-8)
        assert s["grad_std"] == pytest.approx(wg.std(), rel=1e-3)
        assert s["grad_norm"] == pytest.approx(np.linalg.norm(wg), rel=1e-3)
        assert s["weight_norm"] == pytest.approx(np.linalg.norm(W), rel=1e-5)
    assert stats[0]["saturated"] == pytest.approx(np.mean(np.abs(outs[0]) > 0.99))
    assert stats[2]["saturated"] == pytest.approx(np.mean((outs[2] < 0.01) | (outs[2] > 0.99)))
    assert stats[1]["saturated"] is None and stats[3]["saturated"] is None
    assert stats[1]["dead"] == pytest.approx(np.mean(np.all(outs[1] == 0, axis=0)))
    assert stats[1]["dead"] >= 3 / 7
    assert stats[0]["dead"] is None
    table = nv.diagnostics.format_table(stats)
    assert len(table.splitlines()) == 6 and "dL/dW std" in table


def test_saturation_detected_with_huge_weights():
    m, x, y = setup()
    m.layers[0].kernel.value[...] *= 100
    stats = nv.diagnostics.layer_stats(m, x, y)
    assert stats[0]["saturated"] > 0.8


def test_layer_stats_changes_nothing():
    m, x, y = setup()
    w = m.get_weights()
    for i, p in enumerate(m.parameters()):
        p.grad[...] = i + 0.5                       # pending user gradients survive
    step = m._net.step
    nv.diagnostics.layer_stats(m, x, y)
    assert m._net.step == step
    for a, b in zip(m.get_weights(), w):
        assert np.array_equal(a, b)
    for i, p in enumerate(m.parameters()):
        assert np.all(p.grad == i + 0.5)


def test_frozen_layers_report_no_weight_gradient():
    m, x, y = setup()
    m.layers[0].trainable = False
    stats = nv.diagnostics.layer_stats(m, x, y)
    assert stats[0]["grad_norm"] is None and stats[0]["weight_norm"] > 0 and not stats[0]["trainable"]
    assert stats[1]["grad_norm"] > 0
    assert "(frozen)" in nv.diagnostics.format_table(stats)


def test_layer_stats_needs_compiled_model():
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(2)], input_dim=3)
    with pytest.raises(ValueError, match="compile"):
        nv.diagnostics.layer_stats(m, np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
