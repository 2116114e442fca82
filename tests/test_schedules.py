"""nv.schedules: formulas at their boundaries, validation, saving, and the lr
an optimizer actually uses at step t (standalone, train_step and fit)."""
import math

import numpy as np
import pytest

import nerve as nv
from nerve import schedules as S


def test_piecewise_constant_boundaries():
    s = S.PiecewiseConstant([3, 7], [1.0, 0.5, 0.1])
    # Keras convention: the boundary step still uses the earlier value.
    assert [s(t) for t in range(10)] == [1.0] * 4 + [0.5] * 4 + [0.1] * 2
    assert s(10 ** 9) == 0.1
    assert S.PiecewiseConstant([], [0.3])(5) == 0.3


def test_exponential_decay():
    s = S.ExponentialDecay(initial=0.1, decay_steps=10, decay_rate=0.1)
    assert s(0) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.01)  # the playbook's η0·10^(−t/r)
    assert s(5) == pytest.approx(0.1 * 10 ** -0.5)
    st = S.ExponentialDecay(0.1, 10, 0.5, staircase=True)
    assert [st(t) for t in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_power_decay():
    s = S.PowerDecay(initial=0.2, decay_steps=4, power=1.0)
    assert [s(t) for t in (0, 4, 8)] == pytest.approx([0.2, 0.1, 0.2 / 3])
    s2 = S.PowerDecay(0.2, 4, power=0.5)
    assert s2(12) == pytest.approx(0.2 * 4 ** -0.5)
    assert S.PowerDecay(0.2, 4, power=0.0)(100) == pytest.approx(0.2)


def test_cosine_decay_with_warmup():
    s = S.CosineDecay(initial=1.0, decay_steps=10, warmup_steps=4, alpha=0.1)
    assert [s(t) for t in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(14) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)
    s0 = S.CosineDecay(2.0, 8)
    assert s0(0) == pytest.approx(2.0) and s0(4) == pytest.approx(1.0) and s0(8) == pytest.approx(0.0)
    # monotone non-increasing after the warm-up
    vals = [s(t) for t in range(4, 20)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("make", [
    lambda: S.PiecewiseConstant([1, 2], [0.1, 0.01]),
    lambda: S.PiecewiseConstant([2, 1], [0.1, 0.01, 0.001]),
    lambda: S.PiecewiseConstant([1.5], [0.1, 0.01]),
    lambda: S.PiecewiseConstant([-1], [0.1, 0.01]),
    lambda: S.PiecewiseConstant([1], [0.1, -0.01]),
    lambda: S.PiecewiseConstant(3, [0.1]),
    lambda: S.ExponentialDecay(-0.1, 10, 0.5),
    lambda: S.ExponentialDecay(0.1, 0, 0.5),
    lambda: S.ExponentialDecay(0.1, 10, 0.0),
    lambda: S.ExponentialDecay(0.1, 10, 0.5, staircase=1),
    lambda: S.ExponentialDecay(float("nan"), 10, 0.5),
    lambda: S.PowerDecay(0.1, -3),
    lambda: S.PowerDecay(0.1, 3, power=-1),
    lambda: S.CosineDecay(0.1, 10, warmup_steps=-1),
    lambda: S.CosineDecay(0.1, 10, warmup_steps=2.5),
    lambda: S.CosineDecay(0.1, 10, alpha=1.5),
    lambda: S.CosineDecay("0.1", 10),
])
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_bad_step_raises():
    s = S.PowerDecay(0.1, 10)
    for t in (-1, float("nan"), "3", None):
        with pytest.raises(ValueError):
            s(t)
    assert s(np.int64(10)) == pytest.approx(0.05)


ALL = [S.PiecewiseConstant([2, 5], [0.3, 0.2, 0.1]), S.ExponentialDecay(0.1, 7, 0.3, staircase=True),
       S.PowerDecay(0.1, 3, 2.0), S.CosineDecay(0.5, 6, warmup_steps=2, alpha=0.2)]


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_serialize_round_trip(s):
    import json
    data = json.loads(json.dumps(S.serialize(s)))
    back = S.deserialize(data)
    assert back == s and type(back) is type(s)
    assert [back(t) for t in range(12)] == [s(t) for t in range(12)]


def test_deserialize_whitelist():
    with pytest.raises(ValueError, match="unknown schedule"):
        S.deserialize({"class": "Optimizer", "config": {}})
    with pytest.raises(ValueError):
        S.deserialize({"class": "PowerDecay", "config": {"initial": 0.1, "nope": 1}})
    with pytest.raises(ValueError):
        S.deserialize("PowerDecay")
    with pytest.raises(ValueError):
        S.serialize(lambda t: 0.1)


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_standalone_optimizer_uses_schedule_t(s):
    # SGD without momentum: p_{t+1} = p_t − η(t)·g, so each step reveals η(t).
    p = nv.Parameter(np.zeros(4, np.float32))
    opt = nv.optimizers.SGD([p], lr=123.0, schedule=s)
    for t in range(12):
        before = p.value.astype(np.float64)
        p.grad[...] = 1.0
        opt.step()
        used = float((before - p.value)[0])
        assert used == pytest.approx(s(t), rel=1e-5, abs=1e-7), t
        assert opt.lr == pytest.approx(s(t))


def _data():
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 5)).astype(np.float32)
    y = r.integers(0, 3, 64)
    return x, y


def _model(opt):
    nv.manual_seed(21)
    m = nv.Sequential([nv.layers.Dense(6, activation="tanh"), nv.layers.Dense(3)], input_dim=5)
    m.compile(optimizer=opt, loss="cross_entropy")
    return m


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_fit_and_train_step_use_schedule_t(s):
    x, y = _data()
    # Reference: plain train_step with lr assigned by hand before each step.
    ref = _model(nv.optimizers.SGD(lr=1.0, momentum=0.5))
    # train_step with the schedule attached
    ts = _model(nv.optimizers.SGD(lr=1.0, momentum=0.5, schedule=s))
    # fit (per-batch path) with the schedule attached
    ft = _model(nv.optimizers.SGD(lr=1.0, momentum=0.5, schedule=s))
    seen = []

    class Record(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((self.model.optimizer.iterations, self.model.optimizer.lr))

    ft.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[Record()])
    for t in range(12):
        rows = slice((t % 4) * 16, (t % 4 + 1) * 16)
        ref.optimizer.lr = s(t)
        ref.train_step(x[rows], y[rows])
        ts.train_step(x[rows], y[rows])
        assert ts.optimizer.lr == pytest.approx(s(t))
    assert ft.optimizer.iterations == ts.optimizer.iterations == 12
    # the lr at the end of each epoch is the one step t = 4k − 1 used
    assert [it for it, _ in seen] == [4, 8, 12]
    assert [lr for _, lr in seen] == pytest.approx([s(3), s(7), s(11)])
    for a, b, c in zip(ref.parameters(), ts.parameters(), ft.parameters()):
        np.testing.assert_allclose(b.value, a.value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(c.value, a.value, rtol=1e-5, atol=1e-6)


def test_schedule_saved_with_model(tmp_path):
    x, y = _data()
    s = S.CosineDecay(0.5, 6, warmup_steps=2, alpha=0.2)
    m = _model(nv.optimizers.Adam(schedule=s))
    m.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    m.save(tmp_path / "m.nerve")
    m2 = nv.load_model(tmp_path / "m.nerve")
    assert m2.optimizer.schedule == s
    for t in range(2, 9):
        m.train_step(x[:32], y[:32])
        m2.train_step(x[:32], y[:32])
        assert m2.optimizer.lr == pytest.approx(s(t))
    for a, b in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(a.value, b.value)


def test_unsaveable_schedule_is_left_out_but_lr_kept(tmp_path):
    x, y = _data()
    m = _model(nv.optimizers.SGD(schedule=lambda t: 0.1 / (1 + t)))
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert "schedule" not in m.optimizer.get_config()
    m.save(tmp_path / "m.nerve")
    m2 = nv.load_model(tmp_path / "m.nerve")
    assert m2.optimizer.schedule is None
    assert m2.optimizer.lr == pytest.approx(0.1 / 2)
