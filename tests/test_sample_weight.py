"""fit(sample_weight=, class_weight=) against a numpy oracle of one SGD step,
validation_split_mode, and the (row, column) of NaN in validation data."""
import numpy as np
import pytest

import nerve as nv
from conftest import rng


def _linear(d, k, seed=0):
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(k)], input_dim=d)
    return m


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "mae", "focal"])
def test_weighted_step_matches_numpy(loss):
    r = rng(3)
    n, d, k = 24, 5, 3
    x = r.standard_normal((n, d)).astype(np.float32)
    y = r.integers(0, k, n)
    w = r.uniform(0, 3, n)
    w[4] = 0.0
    m = _linear(d, k)
    m.compile(nv.optimizers.SGD(lr=0.5), loss)
    W0, b0 = (p.value.astype(np.float64).copy() for p in m.parameters())
    target = y if loss in ("cross_entropy", "focal") else np.eye(k, dtype=np.float32)[y]
    m.fit(x, target, epochs=1, batch_size=n, shuffle=False, verbose=0, sample_weight=w)
    z = x.astype(np.float64) @ W0 + b0
    onehot = np.eye(k)[y]
    if loss == "cross_entropy":
        dz = _softmax(z) - onehot                         # per-row gradient of -log p_y
    elif loss == "mse":
        dz = 2 * (z - onehot) / k
    elif loss == "mae":
        dz = np.sign(z - onehot) / k
    else:  # focal, gamma=2: numeric per-row gradient of -(1-p)^2 log p
        def row_loss(zz):
            p = _softmax(zz)[np.arange(n), y]
            return -((1 - p) ** 2) * np.log(p)
        dz = np.zeros_like(z)
        for j in range(k):
            e = np.zeros_like(z); e[:, j] = 1e-6
            dz[:, j] = (row_loss(z + e) - row_loss(z - e)) / 2e-6
    dz = dz * w[:, None] / n                              # Keras: sum_i w_i l_i / batch_size
    W1, b1 = (p.value for p in m.parameters())
    np.testing.assert_allclose(W1, W0 - 0.5 * x.T.astype(np.float64) @ dz, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b1, b0 - 0.5 * dz.sum(0), rtol=1e-4, atol=1e-5)


def test_reported_loss_is_weighted_mean():
    r = rng(4)
    x = r.standard_normal((16, 3)).astype(np.float32)
    y = r.integers(0, 2, 16)
    w = r.uniform(0, 2, 16)
    m = _linear(3, 2)
    m.compile(nv.optimizers.SGD(lr=0.0), "cross_entropy")
    p = _softmax(x.astype(np.float64) @ m.parameters()[0].value + m.parameters()[1].value)
    h = m.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0, sample_weight=w)
    expect = float(np.sum(w * -np.log(p[np.arange(16), y])) / 16)
    assert h.history["loss"][0] == pytest.approx(expect, rel=1e-5)


def test_class_weight_equals_sample_weight_and_balanced():
    r = rng(5)
    x = r.standard_normal((30, 4)).astype(np.float32)
    y = np.array([0] * 20 + [1] * 10)
    runs = []
    for kw in ({"class_weight": {0: 0.5, 1: 2.0}}, {"sample_weight": np.where(y == 0, 0.5, 2.0)},
               {"class_weight": "balanced"}, {"sample_weight": np.where(y == 0, 30 / 40, 30 / 20)}):
        m = _linear(4, 2)
        m.compile(nv.optimizers.SGD(lr=0.3), "cross_entropy")
        m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=1, **kw)
        runs.append(m.get_weights()[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[2], runs[3], rtol=1e-6)
    assert not np.allclose(runs[0], runs[2])


@pytest.mark.parametrize("bad, match", [(np.ones(5), r"shape \(30,\)"), (-np.ones(30), ">= 0"),
                                        (np.full(30, np.nan), "NaN")])
def test_bad_sample_weight_refused(bad, match):
    m = _linear(4, 2)
    m.compile("sgd", "cross_entropy")
    before = m.get_weights()[0].copy()
    with pytest.raises(ValueError, match=match):
        m.fit(rng().standard_normal((30, 4)), np.zeros(30, np.int64), sample_weight=bad, verbose=0)
    np.testing.assert_array_equal(m.get_weights()[0], before)


def test_validation_split_modes():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.repeat([0, 1], 10)                             # class-sorted
    seen = {}

    class Grab(nv.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["n"] = self.params["samples"]

    for mode in ("last", "random", "stratified"):
        m = _linear(2, 2)
        m.compile("sgd", "cross_entropy", metrics=["accuracy"])
        m.fit(x, y, epochs=1, validation_split=0.2, validation_split_mode=mode, seed=0, verbose=0,
              callbacks=[Grab()])
        assert seen["n"] == 16
    from nerve.model import _validation_rows
    tr, va = _validation_rows("last", 20, 4, y, 0)
    assert list(va) == [16, 17, 18, 19]
    tr, va = _validation_rows("stratified", 20, 4, y, 0)
    assert sorted(np.bincount(y[va])) == [2, 2] and len(set(tr) | set(va)) == 20
    with pytest.raises(ValueError, match="validation_split_mode"):
        m.fit(x, y, validation_split=0.2, validation_split_mode="first", verbose=0)


def test_nan_in_validation_data_names_row_and_column():
    m = _linear(3, 2)
    m.compile("sgd", "cross_entropy")
    xv = np.zeros((5, 3), np.float32)
    xv[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"validation x contains NaN at row 2, column 1"):
        m.fit(np.zeros((8, 3)), np.zeros(8, np.int64), validation_data=(xv, np.zeros(5, np.int64)), verbose=0)
    yv = np.zeros((5, 2), np.float32)
    yv[4, 0] = np.inf
    m.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"validation y contains Inf at row 4, column 0"):
        m.fit(np.zeros((8, 3)), np.zeros((8, 2)), validation_data=(np.zeros((5, 3)), yv), verbose=0)
