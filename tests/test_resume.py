"""Resumable runs: fit(initial_epoch=...) after save/load, and
nv.callbacks.BackupAndRestore across a real SIGKILL (docs/training.md,
"Resuming a run"). Every comparison is bit for bit."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nerve as nv
from conftest import rng

L = nv.layers


def _data(n=150, d=6, classes=3, seed=0):
    r = rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y % classes


OPTIMIZERS = {
    "adam": lambda: nv.optimizers.Adam(lr=1e-2),
    "sgd_momentum": lambda: nv.optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adamw_schedule": lambda: nv.optimizers.AdamW(lr=1e-2, schedule=nv.schedules.CosineDecay(1e-2, 40)),
}


def _model(make_opt):
    model = nv.Sequential([L.Dense(12, activation="relu"), L.BatchNorm(momentum=0.2), L.Dropout(0.3),
                           L.GaussianNoise(0.1), L.Dense(3)], input_dim=6)
    model.compile(optimizer=make_opt(), loss="cross_entropy", metrics=["accuracy"])
    return model


FIT = dict(batch_size=16, shuffle=True, validation_split=0.2, validation_split_mode="random", verbose=0)


def _state(model):
    st = model.optimizer.state_dict()
    return (model.get_weights(), {k: v for k, v in st["slots"].items()}, st["iterations"], float(st["lr"]),
            int(model._net.step))


def _assert_same(a, b):
    wa, sa, ia, la, ta = a
    wb, sb, ib, lb, tb = b
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    assert (ia, la, ta) == (ib, lb, tb)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_save_load_initial_epoch_is_one_run(opt):
    x, y = _data()
    nv.manual_seed(7)
    one = _model(OPTIMIZERS[opt])
    start = one.to_bytes()
    h1 = one.fit(x, y, epochs=5, **FIT)

    two = nv.load_model(io.BytesIO(start))
    ha = two.fit(x, y, epochs=3, **FIT)
    resumed = nv.load_model(io.BytesIO(two.to_bytes()))
    hb = resumed.fit(x, y, epochs=5, initial_epoch=3, **FIT)
    _assert_same(_state(one), _state(resumed))
    # History numbers the epochs as the one run did, and the logs match.
    assert ha.epoch == [0, 1, 2] and hb.epoch == [3, 4]
    for k in h1.history:
        assert h1.history[k] == ha.history[k] + hb.history[k], k


def test_augment_and_explicit_seed_resume():
    x = rng(1).standard_normal((96, 16)).astype(np.float32)
    y = np.arange(96) % 3

    def make():
        m = nv.Sequential([L.Dense(10, activation="tanh"), L.Dropout(0.2), L.Dense(3)], input_dim=16)
        m.compile(optimizer=nv.optimizers.RMSprop(lr=1e-3), loss="cross_entropy")
        return m

    aug = nv.augment.Compose([nv.augment.GaussianNoise(0.1)]) if hasattr(nv.augment, "GaussianNoise") \
        else (lambda xb, g: xb + g.standard_normal(xb.shape).astype(np.float32) * 0.1)
    nv.manual_seed(3)
    one = make()
    start = one.to_bytes()
    one.fit(x, y, epochs=4, batch_size=8, seed=11, augment=aug, verbose=0)
    two = nv.load_model(io.BytesIO(start))
    two.fit(x, y, epochs=2, batch_size=8, seed=11, augment=aug, verbose=0)
    two = nv.load_model(io.BytesIO(two.to_bytes()))
    two.fit(x, y, epochs=4, initial_epoch=2, batch_size=8, seed=11, augment=aug, verbose=0)
    _assert_same(_state(one), _state(two))


def test_consecutive_fits_shuffle_differently():
    # The epoch's order is keyed by the step count too: fit(epochs=1) twice
    # does not repeat the first epoch's order (as fit(epochs=2) does not).
    x, y = _data(64)
    nv.manual_seed(2)
    a = _model(OPTIMIZERS["sgd_momentum"])
    start = a.to_bytes()
    a.fit(x, y, epochs=2, batch_size=16, verbose=0)
    b = nv.load_model(io.BytesIO(start))
    b.fit(x, y, epochs=1, batch_size=16, verbose=0)
    b.fit(x, y, epochs=2, initial_epoch=1, batch_size=16, verbose=0)
    _assert_same(_state(a), _state(b))
    c = nv.load_model(io.BytesIO(start))
    c.fit(x, y, epochs=1, batch_size=16, verbose=0)
    c.fit(x, y, epochs=1, batch_size=16, verbose=0)   # epoch index 0 again, later step: another order
    assert not all(np.array_equal(u, v) for u, v in zip(a.get_weights(), c.get_weights()))


def test_initial_epoch_bounds():
    x, y = _data(40)
    model = _model(OPTIMIZERS["adam"])
    h = model.fit(x, y, epochs=2, initial_epoch=2, verbose=0)
    assert h.epoch == [] and model.optimizer.iterations == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="initial_epoch"):
            model.fit(x, y, epochs=2, initial_epoch=bad, verbose=0)


# -- BackupAndRestore ------------------------------------------------------------------

def test_backup_resume_in_process_equals_one_run(tmp_path):
    x, y = _data()
    nv.manual_seed(5)
    one = _model(OPTIMIZERS["adam"])
    start = one.to_bytes()
    one.fit(x, y, epochs=6, **FIT)

    class Crash(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    cb = nv.callbacks.BackupAndRestore(tmp_path / "bk")
    two = nv.load_model(io.BytesIO(start))
    with pytest.raises(KeyboardInterrupt):
        two.fit(x, y, epochs=6, callbacks=[Crash(), cb], **FIT)
    assert os.path.exists(cb.path)
    three = nv.load_model(io.BytesIO(start))   # a fresh process would rebuild from scratch
    h = three.fit(x, y, epochs=6, callbacks=[cb], **FIT)
    assert cb.restored_epoch == 3 and h.epoch == [3, 4, 5]
    _assert_same(_state(one), _state(three))
    assert not os.path.exists(cb.path)   # deleted after a complete run


@pytest.mark.parametrize("freq, crash_at, where", [(2, (2, 4), (2, 2)), (3, (1, 7), (1, 6)),
                                                   (4, (3, 2), (3, 0))])
def test_backup_every_k_batches_resumes_inside_the_epoch(tmp_path, freq, crash_at, where):
    # 120 training rows / 16 = 8 batches per epoch (the last one of 8 rows). The crash comes
    # before the backup of the batch it interrupts, so the run resumes at the one before.
    x, y = _data()
    nv.manual_seed(6)
    make = OPTIMIZERS["adamw_schedule"]
    one = _model(make)
    start = one.to_bytes()
    h1 = one.fit(x, y, epochs=5, **FIT)

    class Crash(nv.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batches_end(self, first_batch, batch_losses, logs=None):
            if (self.epoch, first_batch + len(batch_losses)) == crash_at:
                raise KeyboardInterrupt

    cb = nv.callbacks.BackupAndRestore(tmp_path, save_freq=freq)
    two = nv.load_model(io.BytesIO(start))
    with pytest.raises(KeyboardInterrupt):
        two.fit(x, y, epochs=5, callbacks=[Crash(), cb], **FIT)
    three = nv.load_model(io.BytesIO(start))
    again = nv.callbacks.BackupAndRestore(tmp_path)   # save_freq need not match
    h = three.fit(x, y, epochs=5, callbacks=[again], **FIT)
    assert (again.restored_epoch, again.restored_batch) == where
    assert (h.epoch[0], len(h.epoch)) == (where[0], 5 - where[0])
    _assert_same(_state(one), _state(three))
    # The resumed epoch's logs include the batches run before the crash.
    assert h.history["loss"] == h1.history["loss"][where[0]:]
    assert h.history["accuracy"] == h1.history["accuracy"][where[0]:]


def test_backup_kept_when_asked(tmp_path):
    x, y = _data(48)
    model = _model(OPTIMIZERS["adam"])
    cb = nv.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    model.fit(x, y, epochs=2, callbacks=[cb], verbose=0)
    loaded = nv.load_model(cb.path)
    for u, v in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(u, v)
    # A second fit with the same backup continues after epoch 2.
    h = model.fit(x, y, epochs=3, callbacks=[cb], verbose=0)
    assert h.epoch == [2]


def test_early_stopping_state_survives_resume(tmp_path):
    x, y = _data()
    nv.manual_seed(9)
    es_args = dict(monitor="val_loss", patience=2, min_delta=10.0, restore_best_weights=True)
    one = _model(OPTIMIZERS["adam"])
    start = one.to_bytes()
    es1 = nv.callbacks.EarlyStopping(**es_args)
    h1 = one.fit(x, y, epochs=10, callbacks=[es1], **FIT)
    assert es1.stopped_epoch == 2   # min_delta this large: no epoch after the first improves

    class Crash(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    cb = nv.callbacks.BackupAndRestore(tmp_path)
    two = nv.load_model(io.BytesIO(start))
    with pytest.raises(KeyboardInterrupt):
        two.fit(x, y, epochs=10, callbacks=[nv.callbacks.EarlyStopping(**es_args), Crash(), cb], **FIT)
    es2 = nv.callbacks.EarlyStopping(**es_args)
    three = nv.load_model(io.BytesIO(start))
    h = three.fit(x, y, epochs=10, callbacks=[es2, cb], **FIT)
    # wait, best and the best weights came back: it stops at the same epoch and restores epoch 0's weights.
    assert h.epoch == [1, 2]
    assert (es2.stopped_epoch, es2.best_epoch, es2.best) == (es1.stopped_epoch, es1.best_epoch, es1.best)
    _assert_same(_state(one), _state(three))
    assert h1.history["val_loss"][-1] == h.history["val_loss"][-1]


def test_reduce_lr_state_survives_resume(tmp_path):
    x, y = _data()
    args = dict(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    nv.manual_seed(4)
    one = _model(lambda: nv.optimizers.SGD(lr=0.05, momentum=0.9))
    start = one.to_bytes()
    one.fit(x, y, epochs=5, callbacks=[nv.callbacks.ReduceLROnPlateau(**args)], **FIT)

    class Crash(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    cb = nv.callbacks.BackupAndRestore(tmp_path)
    two = nv.load_model(io.BytesIO(start))
    with pytest.raises(KeyboardInterrupt):
        two.fit(x, y, epochs=5, callbacks=[nv.callbacks.ReduceLROnPlateau(**args), Crash(), cb], **FIT)
    three = nv.load_model(io.BytesIO(start))
    three.fit(x, y, epochs=5, callbacks=[nv.callbacks.ReduceLROnPlateau(**args), cb], **FIT)
    assert one.optimizer.lr < 0.05
    _assert_same(_state(one), _state(three))


def test_bad_backups_raise(tmp_path):
    x, y = _data(48)
    model = _model(OPTIMIZERS["adam"])
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        model.fit(x, y, epochs=1, callbacks=[nv.callbacks.BackupAndRestore(not_dir)], verbose=0)
    bk = tmp_path / "bk"
    bk.mkdir()
    cb = nv.callbacks.BackupAndRestore(bk)
    before = model.get_weights()
    for content in (b"garbage", b"PK\x03\x04" + b"\0" * 40):
        (bk / "backup.nerve").write_bytes(content)
        with pytest.raises(nv.ModelFileError, match="backup.nerve"):
            model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    # A truncated backup.
    good = _model(OPTIMIZERS["adam"])
    good.fit(x, y, epochs=1, callbacks=[nv.callbacks.BackupAndRestore(tmp_path / "g", delete_checkpoint=False)],
             verbose=0)
    data = (tmp_path / "g" / "backup.nerve").read_bytes()
    (bk / "backup.nerve").write_bytes(data[: len(data) // 2])
    with pytest.raises(nv.ModelFileError):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    # A plain model file is not a backup.
    good.save(bk / "backup.nerve")
    with pytest.raises(nv.ModelFileError, match="not one BackupAndRestore wrote"):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    # Another architecture, another optimizer.
    other = nv.Sequential([L.Dense(5), L.Dense(3)], input_dim=6)
    other.compile(optimizer="adam", loss="cross_entropy")
    other.fit(x, y, epochs=1, callbacks=[nv.callbacks.BackupAndRestore(tmp_path / "o", delete_checkpoint=False)],
              verbose=0)
    os.replace(tmp_path / "o" / "backup.nerve", bk / "backup.nerve")
    with pytest.raises(nv.ModelFileError, match="another architecture"):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    sgd = _model(lambda: nv.optimizers.SGD(lr=0.1))
    os.replace(tmp_path / "g" / "backup.nerve", bk / "backup.nerve")
    with pytest.raises(nv.ModelFileError, match="SGD"):
        sgd.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    # Nothing trained on any of the failures.
    for u, v in zip(before, model.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert model.optimizer.iterations == 0
    for bad in (0, -1, "batch", 1.5, True):
        with pytest.raises(ValueError, match="save_freq"):
            nv.callbacks.BackupAndRestore(bk, save_freq=bad)
    with pytest.raises(ValueError, match="at most one"):
        model.fit(x, y, epochs=1, callbacks=[cb, nv.callbacks.BackupAndRestore(tmp_path / "z")], verbose=0)


def test_hostile_training_state(tmp_path):
    x, y = _data(48)
    model = _model(OPTIMIZERS["adam"])
    es = nv.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    cb = nv.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)
    model.fit(x, y, epochs=1, callbacks=[es, cb], verbose=0)
    with np.load(cb.path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    config = json.loads(members["config"].tobytes())

    def write(cfg, **extra):
        arrays = dict(members, config=np.frombuffer(json.dumps(cfg).encode(), np.uint8), **extra)
        with open(cb.path, "wb") as f:
            np.savez(f, **arrays)

    for mutate, match in ((lambda s: s.update(epoch=-1), "epoch"), (lambda s: s.update(epoch="3"), "epoch"),
                          (lambda s: s.update(callbacks=[]), "mapping"),
                          (lambda s: s.update(arrays=["backup_99"]), "missing"),
                          (lambda s: s.update(format=2), "not one BackupAndRestore"),
                          (lambda s: s.update(batch=1), "epoch_step"),
                          (lambda s: s.update(batch=1, epoch_step=0, partial=[1.0, -1, 2]), "partial"),
                          (lambda s: s.update(batch=1, epoch_step=0, partial=[float("inf"), 1, 2]), "partial"),
                          (lambda s: s.update(batch=1, epoch_step=0, partial=[1.0, 1, 2]), "shape"),
                          (lambda s: s.update(batch=1, epoch_step=1, partial=[1.0, 1, 2], shape=[48, 16]),
                           "batches of 16"),
                          # step 2 after one epoch of 2 batches: batch 1 from step 0 cannot be
                          (lambda s: s.update(epoch=1, batch=1, epoch_step=0, partial=[1.0, 1, 2], shape=[48, 32]),
                           "batch 1")):
        cfg = json.loads(json.dumps(config))
        mutate(cfg["metadata"]["_nerve_backup"])
        write(cfg)
        with pytest.raises(nv.ModelFileError, match=match):
            model.fit(x, y, epochs=2, callbacks=[es, cb], verbose=0)
    cfg = json.loads(json.dumps(config))
    cfg["metadata"]["_nerve_backup"]["callbacks"]["EarlyStopping#0"]["state"]["wait"] = -4
    write(cfg)
    with pytest.raises(nv.ModelFileError, match="wait"):
        model.fit(x, y, epochs=2, callbacks=[es, cb], verbose=0)
    write(config, backup_0=np.full(3, np.nan, np.float32))
    with pytest.raises(nv.ModelFileError, match="backup_0"):
        model.fit(x, y, epochs=2, callbacks=[es, cb], verbose=0)


# -- a real SIGKILL ------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import nerve as nv
    L = nv.layers
    backup, out, kill_epoch, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    r = np.random.default_rng(0)
    x = r.standard_normal((120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    nv.manual_seed(21)
    model = nv.Sequential([L.Dense(10, activation="relu"), L.BatchNorm(), L.Dropout(0.25), L.Dense(3)],
                          input_dim=6)
    model.compile(optimizer=nv.optimizers.Adam(lr=5e-3), loss="cross_entropy")

    class Kill(nv.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):   # mid-epoch, after some steps of epoch kill_epoch
            if mode == "batch" and self.epoch == kill_epoch and batch == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    if mode == "write":
        # Killed inside the backup write of epoch kill_epoch: the temporary
        # file is written and fsynced, the rename never happens.
        import nerve.model as nm
        real = os.replace
        def replace(src, dst):
            if dst.endswith("backup.nerve") and os.path.exists(os.path.join(os.path.dirname(dst), "epoch-%d" % kill_epoch)):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        nm.os.replace = replace
        class Mark(nv.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == kill_epoch:
                    open(os.path.join(backup, "epoch-%d" % epoch), "w").close()
        cbs = [Mark()]
    else:
        cbs = [Kill()] if mode == "batch" else []
    if mode != "none":
        cbs.append(nv.callbacks.BackupAndRestore(backup, save_freq=2 if mode == "batch" else "epoch"))
    h = model.fit(x, y, epochs=6, batch_size=16, validation_split=0.25, validation_split_mode="random",
                  callbacks=cbs, verbose=0)
    np.savez(out, *model.get_weights(), step=model._net.step, it=model.optimizer.iterations,
             epochs=np.array(h.epoch))
""")


def _run(tmp_path, *args):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def _weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("mode", ["batch", "write"])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, mode):
    ref = _run(tmp_path, tmp_path / "unused", tmp_path / "ref.npz", -1, "none")
    assert ref.returncode == 0, ref.stderr
    backup = tmp_path / "backup"
    backup.mkdir()
    killed = _run(tmp_path, backup, tmp_path / "out.npz", 3, mode)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert not (tmp_path / "out.npz").exists()
    assert (backup / "backup.nerve").exists()
    st = json.loads(np.load(backup / "backup.nerve")["config"].tobytes())["metadata"]["_nerve_backup"]
    if mode == "batch":
        # save_freq=2: the last backup is from inside epoch 3, after its batches 0 and 1.
        assert (st["epoch"], st["batch"]) == (3, 2)
    if mode == "write":
        # The interrupted write left its temporary file; the backup is epoch 2's (3 epochs done).
        assert any(n.startswith(".nerve-") for n in os.listdir(backup))
        assert (st["epoch"], st["batch"]) == (3, 0)
    again = _run(tmp_path, backup, tmp_path / "out.npz", 3, "rerun")
    assert again.returncode == 0, again.stderr
    a, b = _weights(tmp_path / "ref.npz"), _weights(tmp_path / "out.npz")
    assert list(b["epochs"]) == [3, 4, 5]
    assert list(a["epochs"]) == list(range(6))
    for k in a:
        if k != "epochs":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not (backup / "backup.nerve").exists()
    assert not any(n.startswith(".nerve-") for n in os.listdir(backup))   # the stale temp file was removed


def test_distributed_backs_up_at_epoch_ends_only(tmp_path):
    pytest.importorskip("mpi4py")
    import nerve.distributed as nvd

    nvd.init(threads=None)   # no launcher: a world of one rank
    x, y = _data(48)
    model = _model(OPTIMIZERS["adam"])
    with pytest.raises(ValueError, match="epoch ends only"):
        model.fit(x, y, epochs=1, verbose=0, distributed=True,
                  callbacks=[nv.callbacks.BackupAndRestore(tmp_path, save_freq=2)])
    assert model.optimizer.iterations == 0


def test_cache_frozen_resume():
    x, y = _data()

    def make():
        m = nv.Sequential([L.Dense(10, activation="tanh"), L.Dense(8, activation="relu"), L.Dropout(0.2),
                           L.Dense(3)], input_dim=6)
        m.layers[0].trainable = False
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
        return m

    nv.manual_seed(13)
    one = make()
    start = one.to_bytes()
    one.fit(x, y, epochs=4, batch_size=16, cache_frozen=True, verbose=0)
    two = nv.load_model(io.BytesIO(start))
    assert not two.layers[0].trainable
    two.fit(x, y, epochs=2, batch_size=16, cache_frozen=True, verbose=0)
    two = nv.load_model(io.BytesIO(two.to_bytes()))
    two.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, cache_frozen=True, verbose=0)
    _assert_same(_state(one), _state(two))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_resume(cell):
    if not hasattr(L, cell):
        pytest.skip(f"no {cell} layer in this build")
    x = rng(2).standard_normal((64, 5, 3)).astype(np.float32)
    y = np.arange(64) % 3
    fit = dict(batch_size=16, verbose=0, validation_split=0.25, validation_split_mode="random")
    nv.manual_seed(1)
    one = nv.Sequential([getattr(L, cell)(8), L.Dropout(0.2), L.Dense(3)], input_dim=3)
    one.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    start = one.to_bytes()
    one.fit(x, y, epochs=4, **fit)
    two = nv.load_model(io.BytesIO(start))
    two.fit(x, y, epochs=2, **fit)
    two = nv.load_model(io.BytesIO(two.to_bytes()))
    two.fit(x, y, epochs=4, initial_epoch=2, **fit)
    _assert_same(_state(one), _state(two))
