"""L1/L2 penalties (Keras scale) and max-norm: the loss and the gradient
change by exactly l1·Σ|w| + l2·Σw² and l1·sign(w) + 2·l2·w, inside the fused
step too; max-norm bounds every unit's weights after every update."""
import numpy as np
import pytest

import nerve as nv
from conftest import directional_grad_check

L1, L2, BL2 = 3e-3, 2e-2, 5e-2


def data(n=24, d=6, classes=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    return x, r.integers(0, classes, n).astype(np.int64)


def make(reg, seed=4):
    nv.manual_seed(seed)
    kw = dict(kernel_regularizer=nv.regularizers.L1L2(L1, L2), bias_regularizer=nv.regularizers.L2(BL2)) if reg else {}
    m = nv.Sequential([nv.layers.Dense(8, activation="tanh", **kw), nv.layers.Dense(3)], input_dim=6)
    r = np.random.default_rng(1)
    b = m.layers[0].bias
    b.value[...] = r.uniform(0.1, 0.5, b.shape) * r.choice([-1, 1], b.shape)
    # Keep kernel weights away from 0, where |w| has no derivative.
    k = m.layers[0].kernel
    k.value[...] = np.sign(k.value) * np.maximum(np.abs(k.value), 0.02)
    return m


def penalty(m):
    w = m.layers[0].kernel.value.astype(np.float64)
    b = m.layers[0].bias.value.astype(np.float64)
    return L1 * np.abs(w).sum() + L2 * (w ** 2).sum() + BL2 * (b ** 2).sum()


def test_regularizer_objects_compute_keras_penalty():
    w = np.array([[1.0, -2.0], [0.5, 0.0]])
    assert nv.regularizers.L1(0.1)(w) == pytest.approx(0.1 * 3.5)
    assert nv.regularizers.L2(0.1)(w) == pytest.approx(0.1 * 5.25)  # no ½
    assert nv.regularizers.L1L2(0.1, 0.2)(w) == pytest.approx(0.35 + 0.2 * 5.25)
    with pytest.raises(ValueError, match="l2"):
        nv.regularizers.L2(-1.0)


def test_loss_changes_by_exactly_the_penalty():
    x, y = data()
    a, b = make(True), make(False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.value, pb.value)
    for m in (a, b):
        m.compile(optimizer=nv.optimizers.SGD(lr=0.5), loss="cross_entropy")
    pen = penalty(a)
    assert pen > 0.01
    assert a.evaluate(x, y)["loss"] - b.evaluate(x, y)["loss"] == pytest.approx(pen, rel=1e-5)
    assert a._net.regularize(False) == pytest.approx(pen, rel=1e-6)
    # Through the fused step: the reported loss and the update.
    w_before = a.layers[0].kernel.numpy()
    bias_before = a.layers[0].bias.numpy()
    la, lb = a.train_step(x, y), b.train_step(x, y)
    assert la - lb == pytest.approx(pen, rel=1e-5)
    lr = 0.5
    grad_diff_w = (b.layers[0].kernel.value - a.layers[0].kernel.value) / lr
    grad_diff_b = (b.layers[0].bias.value - a.layers[0].bias.value) / lr
    np.testing.assert_allclose(grad_diff_w, L1 * np.sign(w_before) + 2 * L2 * w_before, rtol=1e-3, atol=2e-7)
    np.testing.assert_allclose(grad_diff_b, 2 * BL2 * bias_before, rtol=1e-3, atol=2e-7)
    # The unregularized layer moved identically.
    np.testing.assert_array_equal(a.layers[1].kernel.value, b.layers[1].kernel.value)


def test_penalty_gradient_is_exact_at_the_layer():
    m = make(True)
    layer = m.layers[0]
    for p in layer.parameters():
        p.grad[...] = 0
    value = layer._core.regularize(True)
    w, b = layer.kernel.value, layer.bias.value
    assert value == pytest.approx(penalty(m), rel=1e-6)
    expect_w = np.float32(L1) * np.sign(w) + np.float32(2 * L2) * w
    np.testing.assert_allclose(layer.kernel.grad, expect_w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(layer.bias.grad, np.float32(2 * BL2) * b, rtol=1e-6)
    # A frozen layer reports its penalty but gets no gradient.
    layer.trainable = False
    for p in layer.parameters():
        p.grad[...] = 0
    assert layer._core.regularize(True) == pytest.approx(value)
    assert np.all(layer.kernel.grad == 0)


def test_regularized_loss_gradient_numeric():
    x, y = data(n=10)
    m = make(True)
    m.compile(optimizer="sgd", loss="cross_entropy")
    lf = nv.losses.get("cross_entropy")
    for p in m.parameters():
        p.grad[...] = 0
    out = m.forward(x, training=True)
    m.backward(lf.backward(out, y))  # adds the penalty gradients too, as train_step does
    grads = [p.grad.copy() for p in m.parameters()]
    directional_grad_check(lambda: m.evaluate(x, y)["loss"], [p.value for p in m.parameters()], grads,
                           eps=1e-3)


@pytest.mark.parametrize("axis", [0, 1])
def test_max_norm_bounds_every_unit_after_every_update(axis):
    x, y = data(n=64)
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(16, activation="relu", kernel_constraint=nv.constraints.MaxNorm(0.5, axis=axis)),
                       nv.layers.Dense(3)], input_dim=6)
    m.compile(optimizer=nv.optimizers.SGD(lr=1.0), loss="cross_entropy")
    k = m.layers[0].kernel
    hit = False
    for step in range(20):
        m.train_step(x[step % 4 * 16:(step % 4 + 1) * 16], y[step % 4 * 16:(step % 4 + 1) * 16])
        norms = np.sqrt((k.value.astype(np.float64) ** 2).sum(axis=axis))
        assert np.all(norms <= 0.5 * (1 + 1e-6)), norms.max()
        hit |= bool(np.any(norms > 0.5 * (1 - 1e-5)))
    assert hit  # the constraint was active, not vacuous
    # The unconstrained layer is free to grow past it.
    assert np.sqrt((m.layers[1].kernel.value ** 2).sum(0)).max() > 0.5


def test_max_norm_rescales_like_keras():
    m = nv.Sequential([nv.layers.Dense(2, kernel_constraint=nv.constraints.MaxNorm(1.0))], input_dim=2)
    m.layers[0].kernel.value[...] = [[3.0, 0.3], [4.0, 0.4]]  # column norms 5 and 0.5
    m._net.apply_constraints()
    np.testing.assert_allclose(m.layers[0].kernel.value, [[3 / (5 + 1e-7), 0.3], [4 / (5 + 1e-7), 0.4]], rtol=1e-6)
