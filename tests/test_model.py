"""Sequential end to end: the fused step against the manual loop, fit,
save/load, reproducibility across thread counts."""
import os

import numpy as np
import pytest

import nerve as nv
from conftest import directional_grad_check


def small_data(n=64, d=8, classes=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    w = r.standard_normal((d, classes))
    y = np.argmax(x @ w + 0.1 * r.standard_normal((n, classes)), axis=1).astype(np.int64)
    return x, y


def make_model(d=8, classes=3, act="tanh", seed=7):
    nv.manual_seed(seed)
    return nv.Sequential([nv.layers.Dense(16, activation=act), nv.layers.Dense(12, activation="relu"),
                          nv.layers.Dense(classes)], input_dim=d)


def test_parameters_are_views_of_one_arena():
    m = make_model()
    ps = m.parameters()
    assert [p.shape for p in ps] == [(8, 16), (16,), (16, 12), (12,), (12, 3), (3,)]
    # Writing through the view changes what the model computes.
    x = np.ones((2, 8), np.float32)
    before = m.predict(x)
    ps[-1].value[...] += 1.0
    np.testing.assert_allclose(m.predict(x), before + 1.0, rtol=1e-6)
    # Consecutive parameters are adjacent in memory (one arena).
    addr = [p.value.__array_interface__["data"][0] for p in ps]
    for a, b, p in zip(addr, addr[1:], ps):
        assert b - a == 4 * p.size


def test_forward_matches_numpy():
    m = make_model(act="sigmoid")
    x, _ = small_data()
    W1, b1, W2, b2, W3, b3 = [p.value.astype(np.float64) for p in m.parameters()]
    h = 1 / (1 + np.exp(-(x @ W1 + b1)))
    h = np.maximum(h @ W2 + b2, 0)
    expect = h @ W3 + b3
    np.testing.assert_allclose(m.predict(x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("act", ["identity", "relu", "sigmoid", "tanh", "softmax"])
def test_model_gradient_numeric(act, loss):
    m = make_model(act=act)
    x, y = small_data(n=10)
    target = y if loss == "cross_entropy" else np.eye(3, dtype=np.float32)[y]
    lf = nv.losses.get(loss)
    params = [p.value for p in m.parameters()]
    for p in m.parameters():
        p.grad[...] = 0
    out = m.forward(x, training=True)
    m.backward(lf.backward(out, target))
    grads = [p.grad.copy() for p in m.parameters()]
    directional_grad_check(lambda: lf.forward(m.predict(x), target), params, grads)


def test_backward_input_gradient_numeric():
    m = make_model()
    x, y = small_data(n=5)
    lf = nv.losses.get("cross_entropy")
    out = m.forward(x, training=True)
    dx = m.backward(lf.backward(out, y), return_input_grad=True)
    xv = x.copy()
    directional_grad_check(lambda: lf.forward(m.predict(xv), y), [xv], [dx])


@pytest.mark.parametrize("opt", [lambda: nv.optimizers.SGD(lr=0.1, momentum=0.9, nesterov=True),
                                 lambda: nv.optimizers.Adam(lr=1e-2, amsgrad=True, weight_decay=1e-3)])
def test_train_step_equals_manual_loop(opt):
    x, y = small_data()
    a, b = make_model(seed=3), make_model(seed=3)
    a.compile(optimizer=opt(), loss="cross_entropy")
    b.compile(optimizer=opt(), loss="cross_entropy")
    lf = nv.losses.get("cross_entropy")
    for step in range(20):
        xb, yb = x[step % 4 * 16:(step % 4 + 1) * 16], y[step % 4 * 16:(step % 4 + 1) * 16]
        la = a.train_step(xb, yb)
        out = b.forward(xb, training=True)
        lb = lf.forward(out, yb)
        b.backward(lf.backward(out, yb))
        b.optimizer.step()
        b.optimizer.zero_grad()
        assert la == pytest.approx(lb, rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.value, pb.value)


def test_fit_learns_digits():
    x, y = nv.datasets.load_digits()
    xtr, xte, ytr, yte = nv.datasets.train_test_split(x, y, test_size=0.25, seed=0)
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(64, activation="relu", kernel_initializer="he_normal"),
                       nv.layers.Dense(10)], input_dim=64)
    m.compile(optimizer=nv.optimizers.Adam(lr=3e-3), loss="cross_entropy", metrics=["accuracy"])
    hist = m.fit(xtr, ytr, epochs=15, batch_size=32, validation_split=0.1, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0] / 5
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(hist.history["loss"]) == 15
    assert m.evaluate(xte, yte)["accuracy"] > 0.94


def test_fit_reports_mean_of_batch_losses():
    x, y = small_data(n=50)
    m = make_model()
    m.compile(optimizer=nv.optimizers.SGD(lr=0.0), loss="cross_entropy")  # lr 0: weights fixed
    hist = m.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(m.evaluate(x, y)["loss"], rel=1e-5)


def test_save_load_roundtrip_and_continued_training(tmp_path):
    x, y = small_data(n=96)
    m = make_model()
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy", metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=1)
    path = tmp_path / "model.nerve"
    m.save(path)
    m2 = nv.load_model(path)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    assert m2.optimizer.iterations == m.optimizer.iterations
    for step in range(5):
        la = m.train_step(x[:32], y[:32])
        lb = m2.train_step(x[:32], y[:32])
        assert la == lb
    for pa, pb in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(pa.value, pb.value)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def train_run(threads, seed=5):
    old = nv.get_num_threads()
    nv.set_num_threads(threads)
    try:
        r = np.random.default_rng(0)
        x = r.standard_normal((600, 300)).astype(np.float32)
        y = r.integers(0, 10, 600)
        nv.manual_seed(seed)
        m = nv.Sequential([nv.layers.Dense(512, activation="relu", kernel_initializer="he_normal"),
                           nv.layers.Dense(256, activation="tanh"), nv.layers.Dense(10)], input_dim=300)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
        m.fit(x, y, epochs=2, batch_size=300, verbose=0, seed=seed)
        return np.concatenate([p.value.reshape(-1) for p in m.parameters()])
    finally:
        nv.set_num_threads(old)


def test_same_seed_bit_identical_for_1_and_2_threads():
    a, b = train_run(1), train_run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, train_run(1, seed=6))


def test_summary_lists_layers_and_frozen():
    m = make_model()
    m.layers[0].trainable = False
    text = m.summary(print_fn=None)
    assert "frozen" in text and f"{m.count_params():,}" in text


def test_no_allocation_per_step_after_first():
    x, y = small_data(n=64)
    m = make_model()
    m.compile(optimizer="adam", loss="cross_entropy")
    m.train_step(x[:32], y[:32])
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = nv._core.alloc_count()
    for _ in range(10):
        m.train_step(x[:32], y[:32])
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert nv._core.alloc_count() == before
