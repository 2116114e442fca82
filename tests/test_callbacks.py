"""Callbacks: early stopping (stop epoch, best weights), atomic checkpoints,
ReduceLROnPlateau and LearningRateScheduler schedules, CSV logs,
TerminateOnNaN, GradientMonitor, and the no-per-batch-cost rule."""
import csv
import math
import os

import numpy as np
import pytest

import nerve as nv


def data(n=200, d=10, classes=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    w = r.standard_normal((d, classes))
    y = np.argmax(x @ w + 0.5 * r.standard_normal((n, classes)), axis=1).astype(np.int64)
    return x, y


def model(lr=1e-2, seed=3, d=10, classes=3, opt=None):
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(32, activation="tanh"), nv.layers.Dense(classes)], input_dim=d)
    m.compile(optimizer=opt or nv.optimizers.Adam(lr=lr), loss="cross_entropy", metrics=["accuracy"])
    return m


class Scripted(nv.callbacks.Callback):
    """Replaces the logged monitor value by a scripted sequence and snapshots weights."""

    def __init__(self, values, key="val_loss"):
        super().__init__()
        self.values, self.key, self.snapshots = list(values), key, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.snapshots.append(self.model.get_weights())


def keras_early_stop_epoch(values, patience, min_delta=0.0):
    """Reference (Keras semantics, written here): epoch index at which training stops, or None."""
    best, wait = math.inf, 0
    for epoch, v in enumerate(values):
        wait += 1
        if v < best - min_delta:
            best, wait = v, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch
    return None


@pytest.mark.parametrize("patience,min_delta", [(0, 0.0), (2, 0.0), (3, 0.0), (1, 0.05)])
def test_early_stopping_epoch_and_best_weights(patience, min_delta):
    seq = [1.0, 0.8, 0.82, 0.79, 0.9, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76]
    x, y = data()
    m = model()
    script = Scripted(seq)
    es = nv.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=min_delta,
                                    restore_best_weights=True)
    hist = m.fit(x, y, epochs=len(seq), batch_size=32, callbacks=[script, es], verbose=0, seed=0)
    stop = keras_early_stop_epoch(seq, patience, min_delta)
    assert stop is not None
    assert len(hist.history["loss"]) == stop + 1
    assert es.stopped_epoch == stop
    # best epoch: the last improvement before stopping
    best, best_epoch = math.inf, None
    for e, v in enumerate(seq[: stop + 1]):
        if v < best - min_delta:
            best, best_epoch = v, e
    assert es.best_epoch == best_epoch
    # restored weights equal the parameters saved at that epoch, bit for bit
    for w, snap in zip(m.get_weights(), script.snapshots[best_epoch]):
        assert np.array_equal(w, snap)
    # and differ from the last epoch's
    assert any(not np.array_equal(a, b) for a, b in zip(m.get_weights(), script.snapshots[-1]))


def test_early_stopping_without_restore_keeps_last_weights_and_max_mode():
    x, y = data()
    m = model()
    seq = [0.5, 0.6, 0.55, 0.58, 0.9]
    script = Scripted(seq, key="val_accuracy")
    es = nv.callbacks.EarlyStopping(monitor="val_accuracy", patience=2)   # auto -> max
    m.fit(x, y, epochs=5, callbacks=[script, es], verbose=0, seed=0)
    assert es.stopped_epoch == 3 and es.best_epoch == 1
    for w, snap in zip(m.get_weights(), script.snapshots[-1]):
        assert np.array_equal(w, snap)


def test_early_stopping_on_real_validation_loss():
    # Overfitting a tiny training set: val_loss must rise at some point and training stops early.
    x, y = data(n=300)
    m = model(lr=0.05)
    es = nv.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
    hist = m.fit(x[:40], y[:40], epochs=200, batch_size=8, validation_data=(x[40:], y[40:]),
                 callbacks=[es], verbose=0, seed=1)
    val = hist.history["val_loss"]
    assert len(val) < 200
    assert es.best_epoch == int(np.argmin(val))
    np.testing.assert_allclose(m.evaluate(x[40:], y[40:])["loss"], min(val), rtol=1e-5)


def test_missing_monitor_is_a_clear_error():
    x, y = data()
    m = model()
    with pytest.raises(ValueError, match="val_loss.*validation_data"):
        m.fit(x, y, epochs=2, callbacks=[nv.callbacks.EarlyStopping()], verbose=0)
    with pytest.raises(ValueError):
        nv.callbacks.EarlyStopping(patience=-1)
    with pytest.raises(ValueError):
        nv.callbacks.EarlyStopping(mode="biggest")


# -- checkpoints ---------------------------------------------------------------------
def test_checkpoint_every_epoch_with_formatting(tmp_path):
    x, y = data()
    m = model()
    ck = nv.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.nerve"), save_best_only=False)
    m.fit(x, y, epochs=3, callbacks=[ck], verbose=0, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["m-01.nerve", "m-02.nerve", "m-03.nerve"]
    back = nv.load_model(tmp_path / "m-03.nerve")
    for a, b in zip(back.get_weights(), m.get_weights()):
        assert np.array_equal(a, b)


def test_checkpoint_save_best_only(tmp_path):
    x, y = data()
    m = model()
    seq = [0.9, 0.7, 0.8, 0.6, 0.65]
    script = Scripted(seq)
    ck = nv.callbacks.ModelCheckpoint(str(tmp_path / "best-{epoch}.nerve"), save_best_only=True)
    m.fit(x, y, epochs=5, callbacks=[script, ck], verbose=0, seed=0)
    assert [os.path.basename(p) for p in ck.saved] == ["best-1.nerve", "best-2.nerve", "best-4.nerve"]
    back = nv.load_model(ck.saved[-1])
    for a, b in zip(back.get_weights(), script.snapshots[3]):
        assert np.array_equal(a, b)


def test_checkpoint_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    x, y = data()
    m = model()
    path = tmp_path / "ckpt.nerve"
    ck = nv.callbacks.ModelCheckpoint(str(path))
    m.fit(x, y, epochs=1, callbacks=[ck], verbose=0, seed=0)
    old_bytes = path.read_bytes()
    old_weights = nv.load_model(path).get_weights()

    # Simulate a crash in the middle of writing the archive (after some bytes hit the disk).
    real_savez = np.savez

    def crashing_savez(f, **arrays):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(KeyboardInterrupt):
        m.fit(x, y, epochs=1, callbacks=[ck], verbose=0, seed=1)
    monkeypatch.setattr(np, "savez", real_savez)
    assert path.read_bytes() == old_bytes
    for a, b in zip(nv.load_model(path).get_weights(), old_weights):
        assert np.array_equal(a, b)
    assert os.listdir(tmp_path) == ["ckpt.nerve"]          # no temporary left behind


# -- learning rate --------------------------------------------------------------------
def keras_plateau(values, lr, factor, patience, min_lr, cooldown, min_delta):
    """Reference ReduceLROnPlateau (Keras rules written out): the lr logged each epoch and after."""
    best, wait, cool, logged = math.inf, 0, 0, []
    for v in values:
        logged.append(lr)
        if cool > 0:
            cool -= 1
            wait = 0
        if v < best - min_delta:
            best, wait = v, 0
        elif cool <= 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr = max(lr * factor, min_lr)
                cool, wait = cooldown, 0
    return logged, lr


@pytest.mark.parametrize("patience,cooldown,min_lr", [(2, 0, 0.0), (1, 2, 0.0), (2, 1, 2e-3), (0, 0, 0.0)])
def test_reduce_lr_on_plateau_schedule(patience, cooldown, min_lr):
    seq = [1.0, 0.9, 0.9, 0.95, 0.91, 0.85, 0.85, 0.86, 0.84999, 0.9, 0.9, 0.9, 0.8, 0.9, 0.9]
    x, y = data(n=64)
    m = model(lr=0.1, opt=nv.optimizers.SGD(lr=0.1))
    cb = nv.callbacks.ReduceLROnPlateau(factor=0.5, patience=patience, min_lr=min_lr, cooldown=cooldown,
                                        min_delta=1e-4)
    hist = m.fit(x, y, epochs=len(seq), batch_size=64, callbacks=[Scripted(seq), cb], verbose=0)
    logged, final = keras_plateau(seq, 0.1, 0.5, patience, min_lr, cooldown, 1e-4)
    np.testing.assert_allclose(hist.history["lr"], logged, rtol=1e-6)
    np.testing.assert_allclose(m.optimizer.lr, final, rtol=1e-6)
    assert final < 0.1   # the sequence plateaus enough to reduce at least once
    assert final >= min_lr * (1 - 1e-6)


def test_reduce_lr_changes_the_update_size():
    # After the reduction, SGD steps are 10x smaller: check on the parameter change.
    x, y = data(n=32)
    m = model(opt=nv.optimizers.SGD(lr=0.1))
    m.optimizer.lr = 0.01
    w0 = m.get_weights()
    m.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    small = [a - b for a, b in zip(m.get_weights(), w0)]
    m2 = model(opt=nv.optimizers.SGD(lr=0.1))
    m2.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    big = [a - b for a, b in zip(m2.get_weights(), w0)]
    for s, b in zip(small, big):
        np.testing.assert_allclose(s * 10, b, rtol=1e-3, atol=1e-7)


def test_learning_rate_scheduler():
    x, y = data(n=64)
    m = model(opt=nv.optimizers.SGD(lr=0.1))
    seen = []

    def sched(epoch, lr):
        seen.append((epoch, lr))
        return lr * 0.5 if epoch >= 2 else lr

    hist = m.fit(x, y, epochs=5, callbacks=[nv.callbacks.LearningRateScheduler(sched)], verbose=0)
    np.testing.assert_allclose(hist.history["lr"], [0.1, 0.1, 0.05, 0.025, 0.0125], rtol=1e-6)
    assert [e for e, _ in seen] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([lr for _, lr in seen], [0.1, 0.1, 0.1, 0.05, 0.025], rtol=1e-6)
    # one-argument schedules work too (Keras accepts both)
    m = model(opt=nv.optimizers.SGD(lr=0.1))
    hist = m.fit(x, y, epochs=3, callbacks=[nv.callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))],
                 verbose=0)
    np.testing.assert_allclose(hist.history["lr"], [0.1, 0.05, 0.1 / 3], rtol=1e-6)


def test_lr_callbacks_refuse_scheduled_optimizers():
    x, y = data(n=32)
    m = model(opt=nv.optimizers.SGD(schedule=lambda t: 0.1))
    with pytest.raises(ValueError, match="schedule"):
        m.fit(x, y, epochs=1, callbacks=[nv.callbacks.ReduceLROnPlateau(monitor="loss")], verbose=0)
    with pytest.raises(ValueError, match="factor"):
        nv.callbacks.ReduceLROnPlateau(factor=1.5)
    with pytest.raises(ValueError):
        m2 = model()
        m2.fit(x, y, epochs=1, callbacks=[nv.callbacks.LearningRateScheduler(lambda e, lr: float("nan"))],
               verbose=0)


# -- logs and safety ------------------------------------------------------------------
def test_csv_logger(tmp_path):
    x, y = data()
    m = model()
    path = tmp_path / "log.csv"
    hist = m.fit(x[:150], y[:150], epochs=3, validation_data=(x[150:], y[150:]),
                 callbacks=[nv.callbacks.CSVLogger(str(path))], verbose=0, seed=0)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(rows) == 4
    for e, row in enumerate(rows[1:]):
        assert int(row[0]) == e
        for key, cell in zip(rows[0][1:], row[1:]):
            assert float(cell) == hist.history[key][e]
    # append continues without a second header
    m.fit(x, y, epochs=2, callbacks=[nv.callbacks.CSVLogger(str(path), append=True)], verbose=0)
    with open(path, newline="") as f:
        rows2 = list(csv.reader(f))
    assert len(rows2) == 6 and rows2[0] == rows[0] and rows2[4][0] == "0"


def test_terminate_on_nan():
    x, y = data(n=256)
    x = x * 100
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(64, activation="relu"), nv.layers.Dense(64, activation="relu"),
                       nv.layers.Dense(3)], input_dim=10)
    m.compile(optimizer=nv.optimizers.SGD(lr=1e6), loss="cross_entropy")
    t = nv.callbacks.TerminateOnNaN()
    hist = m.fit(x, y, epochs=50, batch_size=16, callbacks=[t], verbose=0, seed=0)
    assert t.terminated is not None
    epoch, batch = t.terminated
    assert epoch == 0 and batch is not None and batch < 16
    assert len(hist.history["loss"]) == 1
    assert not math.isfinite(hist.history["loss"][-1])
    assert not t.wants_batches()          # no per-batch C++ calls needed
    # the batch it names is the first bad one: a per-batch recorder agrees
    losses = []

    class PerBatch(nv.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(64, activation="relu"), nv.layers.Dense(64, activation="relu"),
                       nv.layers.Dense(3)], input_dim=10)
    m.compile(optimizer=nv.optimizers.SGD(lr=1e6), loss="cross_entropy")
    m.fit(x, y, epochs=1, batch_size=16, callbacks=[PerBatch()], verbose=0, seed=0)
    assert batch == next(i for i, v in enumerate(losses) if not math.isfinite(v))


# -- per-batch cost rule and the hooks -------------------------------------------------
def test_epoch_only_callbacks_keep_whole_epoch_calls(monkeypatch):
    x, y = data(n=320)
    m = model()
    calls = []
    real = m._net.train_batches

    class Spy:
        def __getattr__(self, name):
            return getattr(real.__self__, name)

    def counting(*args, **kw):
        calls.append(len(args[3]))
        return real(*args, **kw)

    net = m._net
    m._net = Spy()
    m._net.__dict__["train_batches"] = counting
    try:
        m.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[nv.callbacks.EarlyStopping(monitor="loss", patience=5), nv.callbacks.CSVLogger(os.devnull),
                         nv.callbacks.TerminateOnNaN(), nv.callbacks.GradientMonitor(probe_size=16)])
        assert calls == [320, 320]          # one C++ call per epoch
        calls.clear()

        class PerBatch(nv.callbacks.Callback):
            def on_batch_end(self, batch, logs=None):
                pass

        m.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[PerBatch()])
        assert calls == [32] * 10           # per batch when asked
    finally:
        m._net = net


def test_gradient_monitor_records_and_does_not_disturb_training():
    x, y = data(n=128)
    base = model()
    h1 = base.fit(x, y, epochs=3, batch_size=32, verbose=0, seed=5)
    m = model()
    mon = nv.callbacks.GradientMonitor(probe_size=64)
    h2 = m.fit(x, y, epochs=3, batch_size=32, verbose=0, seed=5, callbacks=[mon])
    # identical training with and without the monitor
    assert h1.history["loss"] == h2.history["loss"]
    for a, b in zip(base.get_weights(), m.get_weights()):
        assert np.array_equal(a, b)
    assert mon.epochs == [-1, 0, 1, 2]
    g = mon.series("grad_norm")
    assert g.shape == (4, 2) and np.all(g > 0)
    # the last record equals a direct call on the same probe batch
    direct = nv.diagnostics.layer_stats(m, x[:64], y[:64])
    assert mon.records[-1][1][1]["grad_norm"] == direct[1]["grad_norm"]


def test_gradient_monitor_with_explicit_probe_and_every():
    x, y = data(n=96)
    m = model()
    mon = nv.callbacks.GradientMonitor(x[:10], y[:10], every=2)
    m.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[mon])
    assert mon.epochs == [-1, 1, 3]
    assert mon.series("act_std").shape == (3, 2)
    assert np.isnan(mon.series("saturated")[:, 1]).all()       # identity output layer: not applicable
    assert (mon.series("saturated")[:, 0] >= 0).all()           # tanh layer: a fraction
    with pytest.raises(ValueError, match="both x and y"):
        nv.callbacks.GradientMonitor(x[:10])
