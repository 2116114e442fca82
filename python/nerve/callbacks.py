"""Training callbacks (Keras-style hooks called by ``model.fit``).

Subclass :class:`Callback` and override the hooks you need. ``fit`` runs whole
runs of batches in one C++ call unless a callback overrides a per-batch hook,
so callbacks that only act per epoch cost nothing per batch.

Callbacks are called in the order given, then the History; a callback may add
entries to ``logs`` in ``on_epoch_end`` (LearningRateScheduler and
ReduceLROnPlateau add ``"lr"``) and later callbacks and the History see them.
"""
import csv
import inspect
import math
import os

import numpy as np


class Callback:
    """Base class: every hook receives ``logs``, a dict of the current values.

    ``self.model`` is the model being trained; ``self.params`` holds fit's
    settings (``epochs``, ``steps``, ``batch_size``, ``samples``, ``verbose``).
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def _set_fit_data(self, x, y):
        """fit hands over its (float32) training data; most callbacks ignore it."""

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batches_end(self, first_batch, batch_losses, logs=None):
        """After every run of batches fit hands to C++ in one call (the whole
        epoch unless a callback wants single batches): `batch_losses` holds
        the loss of each of its batches, the first being batch `first_batch`
        of the epoch. Costs nothing per batch."""

    def _get_state(self):
        """(JSON-able dict, list of float32 arrays) of the state this callback
        carries between epochs, for BackupAndRestore; None when it has none."""
        return None

    def _set_state(self, state, arrays):
        """Restores what _get_state returned (called after on_train_begin)."""

    def wants_batches(self):
        """True when this callback overrides a per-batch hook."""
        cls = type(self)
        return cls.on_batch_begin is not Callback.on_batch_begin or cls.on_batch_end is not Callback.on_batch_end


# -- helpers -----------------------------------------------------------------------
def _check_mode(mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _direction(monitor, mode):
    """'min' or 'max': auto means max for accuracy-like names (Keras rule)."""
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return "max" if ("acc" in name or name.startswith("fmeasure") or name in ("auc", "precision", "recall")) \
        else "min"


def _monitored(cb_name, monitor, logs):
    if logs is None or monitor not in logs:
        logged = ", ".join(sorted(logs or {})) or "nothing"
        hint = " (pass validation_data or validation_split to fit)" if monitor.startswith("val_") else ""
        raise ValueError(f"{cb_name} monitors {monitor!r}, which fit did not log (logged: {logged}){hint}")
    return float(logs[monitor])


def _nonneg(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _nonneg_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _state_int(state, key, lo=0):
    v = state.get(key) if isinstance(state, dict) else None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2 ** 62:
        raise ValueError(f"callback state {key!r} must be an int >= {lo}, got {v!r}")
    return v


def _state_float(state, key):
    v = state.get(key) if isinstance(state, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise ValueError(f"callback state {key!r} must be a number, got {v!r}")
    return float(v)


def _weights_like(model, arrays, what):
    shapes = [w.shape for w in model.get_weights()]
    if len(arrays) != len(shapes) or any(a.size != int(np.prod(s)) for a, s in zip(arrays, shapes)):
        raise ValueError(f"{what}: {len(arrays)} arrays that do not match the model's {len(shapes)} weights")
    return [np.asarray(a, np.float32).reshape(s).copy() for a, s in zip(arrays, shapes)]


class _Improvement:
    """Tracks the best value of a monitored quantity: improved when it beats
    the best by more than min_delta in the monitored direction."""

    def __init__(self, monitor, mode, min_delta):
        self.direction = _direction(monitor, _check_mode(mode))
        self.min_delta = abs(float(min_delta))
        self.reset()

    def reset(self):
        self.best = math.inf if self.direction == "min" else -math.inf

    def improved(self, current):
        if math.isnan(current):
            return False
        if self.direction == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


def _optimizer_of(model, who):
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise ValueError(f"{who} needs a compiled model (it changes the optimizer's learning rate)")
    if getattr(opt, "schedule", None) is not None:
        raise ValueError(f"{who} sets optimizer.lr, but this optimizer follows a schedule= that would "
                         "override it at every step; use one or the other")
    return opt


# -- early stopping ------------------------------------------------------------------
class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved for `patience` epochs.

    An epoch improves when the value beats the best so far by more than
    `min_delta` (lower for losses, higher for accuracies with mode="auto").
    After `patience` consecutive epochs without improvement, training stops
    (Keras semantics: patience=0 stops at the first epoch without
    improvement). With ``restore_best_weights=True`` the parameters of the
    best epoch are put back when training ends (early or not, as Keras 3).
    ``stopped_epoch`` and ``best_epoch`` are 0-based epoch indices (``-1``
    when training was not stopped). Reference: Prechelt, "Early Stopping —
    But When?" (1998).
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, restore_best_weights=False,
                 mode="auto", verbose=0):
        super().__init__()
        self.monitor = str(monitor)
        self.patience = _nonneg_int("patience", patience)
        self.min_delta = _nonneg("min_delta", min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self._tracker = _Improvement(self.monitor, mode, min_delta)
        self.mode = mode
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self._tracker.reset()
        self.wait = 0
        self.stopped_epoch = -1
        self.best_epoch = -1
        self.best_weights = None

    @property
    def best(self):
        return self._tracker.best

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored("EarlyStopping", self.monitor, logs)
        self.wait += 1
        if self._tracker.improved(current):
            self._tracker.best = current
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def _get_state(self):
        return ({"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                 "stopped_epoch": self.stopped_epoch},
                list(self.best_weights) if self.best_weights is not None else [])

    def _set_state(self, state, arrays):
        self.wait = _state_int(state, "wait")
        self._tracker.best = _state_float(state, "best")
        self.best_epoch = _state_int(state, "best_epoch", lo=-1)
        self.stopped_epoch = _state_int(state, "stopped_epoch", lo=-1)
        if self.restore_best_weights and arrays:
            self.best_weights = _weights_like(self.model, arrays, "EarlyStopping best weights")

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self.verbose and self.stopped_epoch >= 0:
            print(f"EarlyStopping: stopped after epoch {self.stopped_epoch + 1}; best {self.monitor} "
                  f"{self.best:.6g} at epoch {self.best_epoch + 1}")


# -- checkpoints -----------------------------------------------------------------------
def _writes_files(model):
    """False on ranks other than 0 of a distributed fit: the replicas are
    identical, one copy of each file is enough (and ranks writing one path
    would race)."""
    dist = getattr(model, "_dist", None)
    return dist is None or dist.rank == 0


class ModelCheckpoint(Callback):
    """Saves the model (``model.save``: architecture, weights, optimizer state)
    after every epoch, or only when `monitor` improves (``save_best_only``).

    `path` may contain ``str.format`` fields: ``{epoch}`` (1-based, as Keras)
    and any logged value, e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.nerve"``.
    Writes are atomic: the file is written under a temporary name and renamed,
    so an interrupted save leaves the previous checkpoint intact. In a
    distributed fit only rank 0 writes.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", verbose=0):
        super().__init__()
        self.path = os.fspath(path)
        self.monitor = str(monitor)
        self.save_best_only = bool(save_best_only)
        self._tracker = _Improvement(self.monitor, mode, 0.0)
        self.verbose = verbose
        self.saved = []   # paths written, in order

    def on_train_begin(self, logs=None):
        self._tracker.reset()

    def _get_state(self):
        return {"best": self._tracker.best, "saved": list(self.saved)}, []

    def _set_state(self, state, arrays):
        self._tracker.best = _state_float(state, "best")
        saved = state.get("saved", [])
        if isinstance(saved, list) and all(isinstance(p, str) for p in saved):
            self.saved = list(saved)

    def _filename(self, epoch, logs):
        try:
            return self.path.format(epoch=epoch + 1, **(logs or {}))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: cannot format path {self.path!r} with epoch and the logged "
                             f"values {sorted(logs or {})}: {e!r}") from None

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            current = _monitored("ModelCheckpoint", self.monitor, logs)
            if not self._tracker.improved(current):
                return
            self._tracker.best = current
        path = self._filename(epoch, logs)
        if not _writes_files(self.model):
            return
        self.model.save(path)
        self.saved.append(path)
        if self.verbose:
            print(f"ModelCheckpoint: saved {path}")


# -- learning rate ---------------------------------------------------------------------
class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` when `monitor` has stopped
    improving for `patience` epochs (Keras semantics).

    Improvement: beating the best by more than `min_delta`. After a reduction
    the callback waits `cooldown` epochs before counting again; the rate never
    goes below `min_lr`. Adds ``logs["lr"]`` (the rate used in the epoch).
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, cooldown=0,
                 min_delta=1e-4, mode="auto", verbose=0):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.monitor = str(monitor)
        self.factor = float(factor)
        self.patience = _nonneg_int("patience", patience)
        self.min_lr = float(_nonneg("min_lr", min_lr))
        self.cooldown = _nonneg_int("cooldown", cooldown)
        self.min_delta = _nonneg("min_delta", min_delta)
        self._tracker = _Improvement(self.monitor, mode, min_delta)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        _optimizer_of(self.model, "ReduceLROnPlateau")
        self._tracker.reset()
        self.wait = 0
        self.cooldown_counter = 0

    def _get_state(self):
        # The rate itself is optimizer state (saved with it).
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": self._tracker.best}, []

    def _set_state(self, state, arrays):
        self.wait = _state_int(state, "wait")
        self.cooldown_counter = _state_int(state, "cooldown_counter")
        self._tracker.best = _state_float(state, "best")

    def on_epoch_end(self, epoch, logs=None):
        opt = _optimizer_of(self.model, "ReduceLROnPlateau")
        if logs is not None:
            logs["lr"] = float(opt.lr)
        current = _monitored("ReduceLROnPlateau", self.monitor, logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._tracker.improved(current):
            self._tracker.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(opt.lr)
                # float32 comparison, as the rate is stored in float32 precision in the kernels
                if np.float32(old) > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    opt.lr = new
                    if self.verbose:
                        print(f"ReduceLROnPlateau: epoch {epoch + 1}: lr {old:.3g} -> {new:.3g}")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


def _takes_two_args(fn):
    """Whether fn can be called as fn(epoch, lr) (else fn(epoch))."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):   # some builtins: assume the Keras form
        return True
    try:
        sig.bind(0, 0.0)
        return True
    except TypeError:
        return False


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of every epoch to
    ``schedule(epoch, lr)`` (epoch counted from 0, lr the current rate), or
    ``schedule(epoch)`` for a one-argument function (Keras semantics). Adds
    ``logs["lr"]``. For per-step schedules use an optimizer's ``schedule=``.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler needs a callable schedule(epoch, lr), got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose
        self._two_args = _takes_two_args(schedule)

    def on_train_begin(self, logs=None):
        _optimizer_of(self.model, "LearningRateScheduler")

    def on_epoch_begin(self, epoch, logs=None):
        opt = _optimizer_of(self.model, "LearningRateScheduler")
        lr = self.schedule(epoch, float(opt.lr)) if self._two_args else self.schedule(epoch)
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise ValueError(f"the schedule returned {lr!r} at epoch {epoch}; expected a number") from None
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"the schedule returned lr={lr} at epoch {epoch}; expected a finite number >= 0")
        opt.lr = lr
        if self.verbose:
            print(f"LearningRateScheduler: epoch {epoch + 1}: lr = {lr:.6g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.lr)


# -- logging and safety ------------------------------------------------------------------
class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` (0-based, as Keras) then every
    logged value, columns in sorted order; the header is written first.
    ``append=True`` continues an existing file (no second header). In a
    distributed fit only rank 0 writes."""

    def __init__(self, path, separator=",", append=False):
        super().__init__()
        self.path = os.fspath(path)
        self.separator = separator
        self.append = bool(append)
        self._file = None
        self._writer = None
        self._keys = None

    def on_train_begin(self, logs=None):
        if not _writes_files(self.model):
            self._file = None
            return
        exists = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._keys = None
        self._header_written = exists

    def on_epoch_end(self, epoch, logs=None):
        if self._file is None:
            return
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.writer(self._file, delimiter=self.separator)
            if not self._header_written:
                self._writer.writerow(["epoch"] + self._keys)
        self._writer.writerow([epoch] + [repr(float(logs[k])) if k in logs else "NA" for k in self._keys])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


class TerminateOnNaN(Callback):
    """Stops training when a batch loss is NaN or infinite.

    It reads the per-batch losses of every run of batches fit trains in one
    C++ call, so it adds no per-batch cost: training stops at the end of the
    run holding the first bad batch (weights are NaN from there on anyway).
    ``terminated`` records (epoch, first bad batch), or None."""

    def __init__(self):
        super().__init__()
        self.terminated = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.terminated = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batches_end(self, first_batch, batch_losses, logs=None):
        bad = np.flatnonzero(~np.isfinite(np.asarray(batch_losses)))
        if bad.size and self.terminated is None:
            self.terminated = (self._epoch, first_batch + int(bad[0]))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            if self.terminated is None:
                self.terminated = (epoch, None)
            self.model.stop_training = True


# -- diagnostics ---------------------------------------------------------------------------
class GradientMonitor(Callback):
    """Records :func:`nerve.diagnostics.layer_stats` on a fixed probe batch
    before training and after every `every` epochs: per layer activation
    mean/std, saturated/dead fractions, gradient mean/std/norm and weight norm.

    Give the probe as ``GradientMonitor(x, y)``; without it the first
    `probe_size` training rows are used. Stats never change the weights,
    the gradients or the random stream of training.

    ``records`` is a list of (epoch, stats) with epoch -1 for the state before
    training; ``series(key)`` returns an (n_records, n_layers) array, e.g.
    ``series("grad_std")``.
    """

    def __init__(self, x=None, y=None, probe_size=256, every=1):
        super().__init__()
        if (x is None) != (y is None):
            raise ValueError("GradientMonitor: give both x and y for the probe batch, or neither")
        if isinstance(probe_size, bool) or not isinstance(probe_size, (int, np.integer)) or probe_size < 1:
            raise ValueError(f"probe_size must be an int >= 1, got {probe_size!r}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.x, self.y = x, y
        self._given = x is not None
        self.probe_size = int(probe_size)
        self.every = int(every)
        self.records = []

    def _set_fit_data(self, x, y):
        if not self._given:
            k = min(self.probe_size, x.shape[0])
            self.x = x[:k]
            self.y = tuple(np.asarray(a)[:k] for a in y) if isinstance(y, tuple) else np.asarray(y)[:k]

    def _record(self, epoch):
        from . import diagnostics

        self.records.append((epoch, diagnostics.layer_stats(self.model, self.x, self.y)))

    def on_train_begin(self, logs=None):
        if self.x is None:
            raise ValueError("GradientMonitor has no probe batch")
        self.records = []
        self._record(-1)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self._record(epoch)

    @property
    def epochs(self):
        return [e for e, _ in self.records]

    def series(self, key):
        """(records, layers) array of one statistic (NaN where a layer lacks it)."""
        if not self.records:
            return np.zeros((0, 0))
        return np.array([[s.get(key, np.nan) if s.get(key) is not None else np.nan for s in stats]
                         for _, stats in self.records], dtype=np.float64)


# -- fault tolerance -------------------------------------------------------------------------
_BACKUP_FILE = "backup.nerve"
_BACKUP_KEY = "_nerve_backup"
_BACKUP_FORMAT = 1


class BackupAndRestore(Callback):
    """Resumes a run that was killed (SIGKILL, a node lost, a time limit)
    where it stopped (Keras 3 semantics).

    At the end of every epoch the training state goes into one file,
    ``backup_dir/backup.nerve``: the model file (architecture, weights,
    buffers, pruning masks, optimizer state and step count, the network's
    seed, stream and step counter that key dropout and noise) plus the
    number of epochs done, ``model.stop_training`` and the state of the other
    callbacks (EarlyStopping's best, wait and best weights, ReduceLROnPlateau's
    counters, ModelCheckpoint's best). It is written under a temporary name,
    fsynced and renamed (as ``model.save``), so a kill during a write leaves
    the previous backup whole. When ``fit`` starts and a backup exists, it is
    restored into the model and training continues at the next epoch; the
    resumed run gives the bits of an uninterrupted one (the shuffle order and
    every random draw are functions of the saved state). When fit ends
    normally the backup is deleted, unless ``delete_checkpoint=False``.

    A backup that is corrupt, truncated, not a backup, or for another
    architecture or optimizer raises ``ValueError`` (``nv.ModelFileError``
    for an unreadable file): never a silent wrong resume. In a distributed
    fit rank 0 writes and reads the backup and the state is broadcast.
    ``save_freq=k`` (an int) also backs up after every k-th batch of an
    epoch (fit then hands at most k batches to C++ at a time), and a rerun
    continues inside that epoch, with the same bits; distributed fits back up
    at epoch ends only. ``restored_epoch`` and ``restored_batch`` say where
    fit resumed (None when it started fresh).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer))
                                     or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or an int >= 1 (a backup every that "
                             f"many batches, and at every epoch's end), got {save_freq!r}")
        save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self.restored_epoch = None
        self.restored_batch = None
        self._callbacks = []

    @property
    def path(self):
        """The backup file: ``backup_dir/backup.nerve``."""
        return os.path.join(self.backup_dir, _BACKUP_FILE)

    def _check_dir(self):
        if os.path.exists(self.backup_dir) and not os.path.isdir(self.backup_dir):
            raise ValueError(f"BackupAndRestore: backup_dir {self.backup_dir!r} exists and is not a directory")

    # -- reading ---------------------------------------------------------------
    def _read(self, model):
        """The backup's training state, written into `model`; None without a backup."""
        from . import model as _model

        self._check_dir()
        path = self.path
        if not os.path.lexists(path):
            return None
        if not os.path.isfile(path):
            raise ValueError(f"BackupAndRestore: {path} is not a regular file")
        loaded = _model.load_model(path)
        state = loaded.metadata.pop(_BACKUP_KEY, None) if isinstance(loaded.metadata, dict) else None
        try:
            if not isinstance(state, dict) or state.get("format") != _BACKUP_FORMAT:
                raise ValueError("no training state (a model file, but not one BackupAndRestore wrote)")
            epoch = _state_int(state, "epoch")
            batch = _state_int(state, "batch") if "batch" in state else 0
            partial = None
            if batch:
                epoch_step = _state_int(state, "epoch_step")
                partial = state.get("partial")
                if not (isinstance(partial, list) and len(partial) == 3 and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in partial) and all(isinstance(v, int) and v >= 0 for v in partial[1:])):
                    raise ValueError(f"the partial epoch sums must be [loss_sum, correct, seen], got {partial!r}")
                partial = (float(partial[0]), partial[1], partial[2])
                epoch_shape = state.get("shape")
                if not (isinstance(epoch_shape, list) and len(epoch_shape) == 2 and
                        all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in epoch_shape)):
                    raise ValueError(f"shape must be [rows, batch_size], got {epoch_shape!r}")
            if not isinstance(state.get("callbacks"), dict):
                raise ValueError("callback state must be a mapping")
            arrays = {}
            limit = sum(w.size for w in model.get_weights())
            with np.load(path, allow_pickle=False) as archive:
                for name in state.get("arrays", []):
                    if not isinstance(name, str) or not name.startswith("backup_") or \
                            f"{name}.npy" not in archive.zip.namelist():
                        raise ValueError(f"callback array {name!r} missing")
                    shape = _model._npy_shape(archive, name)
                    if len(shape) != 1 or shape[0] > limit:
                        raise ValueError(f"callback array {name!r} has shape {shape}, more than the model holds")
                    _model._check_member(archive, name, shape[0])
                    arr = archive[name]
                    if arr.dtype != np.float32 or arr.ndim != 1 or not np.all(np.isfinite(arr)):
                        raise ValueError(f"callback array {name!r} is not finite float32 values")
                    arrays[name] = arr
            self._apply(model, loaded)
        except Exception as e:
            raise _model.ModelFileError(f"{path}: not a usable BackupAndRestore backup: "
                                        f"{type(e).__name__}: {e}") from e
        return {"epoch": epoch, "batch": batch, "epoch_step": epoch_step if batch else None, "partial": partial,
                "shape": epoch_shape if batch else None,
                "stop_training": bool(state.get("stop_training", False)),
                "callbacks": state["callbacks"], "arrays": arrays, "stream": loaded._stream}

    @staticmethod
    def _apply(model, loaded):
        """Copies the backed-up state into `model` (same architecture and optimizer class), all checked first."""
        import json

        mine = json.loads(json.dumps(model.get_config()))
        theirs = json.loads(json.dumps(loaded.get_config()))
        if mine["layers"] != theirs["layers"] or mine["input_dim"] != theirs["input_dim"]:
            raise ValueError("the backup holds another architecture than the model being trained")
        if loaded.optimizer is None or type(loaded.optimizer).__name__ != type(model.optimizer).__name__:
            got = type(loaded.optimizer).__name__ if loaded.optimizer is not None else "no optimizer"
            raise ValueError(f"the backup holds {got}, the model is compiled with "
                             f"{type(model.optimizer).__name__}")
        params, theirs_p = model.parameters(), loaded.parameters()
        model._bind_optimizer()
        opt_state = loaded.optimizer.state_dict()
        # Checks everything (slot sizes, scalars) before changing anything.
        model.optimizer.load_state_dict(opt_state)
        model.set_weights(loaded.get_weights())
        for p, q in zip(params, theirs_p):
            if q._arena.has_mask:
                if not p._arena.has_mask:
                    p._arena.enable_mask()
                p._arena.mask(p._offset, p.size)[...] = q._arena.mask(q._offset, q.size)
            elif p._arena.has_mask:
                p._arena.mask(p._offset, p.size)[...] = 1.0
        for p in params:
            if p._arena.has_mask:
                p._arena.apply_mask()
        model._net.seed = loaded._net.seed
        model._net.step = loaded._net.step
        model._set_streams(loaded._stream)

    def _restore(self, model, callbacks, distributed):
        """Called by fit before training (and before a distributed fit's
        broadcast): restores the model from the backup. Returns the training
        state for _restore_callbacks, or None when there is no backup."""
        self._callbacks = list(callbacks)
        if distributed and self.save_freq != "epoch":
            raise ValueError("BackupAndRestore: a distributed fit backs up at epoch ends only (save_freq='epoch'): "
                             "inside an epoch the ranks' BatchNorm statistics and partial sums differ")
        if not distributed:
            resumed = self._read(model)
        else:
            from . import distributed as _dist

            if not _dist.is_initialized():
                _dist.init()
            resumed, error = None, None
            if _dist.rank() == 0:
                try:
                    resumed = self._read(model)
                except ValueError as e:
                    error = (type(e).__name__, str(e))
            # The weights and optimizer state follow in the fit's broadcast from rank 0.
            resumed, error = _dist.comm().bcast((resumed, error), root=0)
            if error is not None:
                from . import model as _model

                raise (_model.ModelFileError if error[0] == "ModelFileError" else ValueError)(
                    f"rank 0: {error[1]}")
            if resumed is not None and _dist.rank() != 0:
                model._set_streams(resumed["stream"])
        self.restored_epoch = None if resumed is None else resumed["epoch"]
        self.restored_batch = None if resumed is None else resumed["batch"]
        return resumed

    def _restore_callbacks(self, callbacks, resumed):
        """After on_train_begin (which resets the callbacks): their backed-up state."""
        saved, arrays = resumed["callbacks"], resumed["arrays"]
        for key, cb in _state_keys(callbacks):
            entry = saved.get(key)
            if not isinstance(entry, dict):
                continue  # a callback added since the backup: it starts fresh
            names = entry.get("arrays", [])
            try:
                cb._set_state(entry.get("state"), [arrays[n] for n in names])
            except (KeyError, TypeError, ValueError) as e:
                from . import model as _model

                raise _model.ModelFileError(f"{self.path}: callback state of {key}: {e}") from None
        self.model.stop_training = False

    # -- writing ---------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._check_dir()

    def on_epoch_end(self, epoch, logs=None):
        self._backup(epoch + 1, 0)

    def _backup(self, epoch, batch, epoch_step=None, partial=None, shape=None):
        """Writes the backup: `epoch` epochs done and, inside an epoch (fit
        calls this every save_freq batches), `batch` batches of the next one,
        with the step count at its start and its partial log sums."""
        if not _writes_files(self.model):
            return
        from . import model as _model

        callbacks, extra = {}, {}
        for key, cb in _state_keys(self._callbacks):
            got = cb._get_state()
            if got is None:
                continue
            state, arrays = got
            names = []
            for j, a in enumerate(arrays):
                name = f"backup_{len(extra)}"
                extra[name] = a
                names.append(name)
            callbacks[key] = {"state": state, "arrays": names}
        metadata = dict(self.model.metadata or {})
        state = {"format": _BACKUP_FORMAT, "epoch": int(epoch), "batch": int(batch),
                 "stop_training": bool(self.model.stop_training), "callbacks": callbacks, "arrays": list(extra)}
        if batch:
            state.update(epoch_step=int(epoch_step), partial=[float(partial[0]), int(partial[1]), int(partial[2])],
                         shape=[int(shape[0]), int(shape[1])])
        metadata[_BACKUP_KEY] = state
        os.makedirs(self.backup_dir, exist_ok=True)
        _model._atomic_savez(self.path, self.model._file_arrays(metadata=metadata, extra=extra))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and _writes_files(self.model):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _bad_backup(cb, why):
    from . import model as _model

    return _model.ModelFileError(f"{cb.path}: not a usable BackupAndRestore backup: {why}")


def _state_keys(callbacks):
    """(key, callback) for the callbacks whose state a backup carries: class
    name and its occurrence among callbacks of that class."""
    seen = {}
    for cb in callbacks:
        if isinstance(cb, BackupAndRestore) or type(cb).__name__ == "History":
            continue
        name = type(cb).__name__
        k = seen.get(name, 0)
        seen[name] = k + 1
        yield f"{name}#{k}", cb
