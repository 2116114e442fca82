"""Sequential models: building into one parameter arena, the fused training
step, fit/evaluate/predict, and code-free model files."""
import io as _io
import json
import os
import tempfile
import weakref
import zipfile

import numpy as np

from . import _core, _random, callbacks as _callbacks, layers as _layers, losses as _losses
from . import metrics as _metrics, optimizers as _optimizers
from ._locks import ModelLock, leaf_layers as _leaf_layer_list, locked as _locked
from .parameter import finite_float32 as _finite_float32
from ._progress import Progress
from ._version import __version__


class History(_callbacks.Callback):
    """Per-epoch logs of ``fit``: ``history.history["loss"]``, ``["val_loss"]``, ..."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _as_x(x, input_dim=None, what="x"):
    """float32 C-contiguous (batch, features); float64 and ints are converted (documented)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (batch, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if input_dim is not None and arr.shape[1] != input_dim:
        raise ValueError(f"{what}: the model expects {input_dim} features per row, got {arr.shape[1]} "
                         f"(shape {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_seq(x, input_dim=None, what="x"):
    """float32 C-contiguous (batch, time, features) sequences; ints are converted."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{what} must be 3-D (batch, time, features) for a model with recurrent layers, "
                         f"got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if input_dim is not None and arr.shape[2] != input_dim:
        raise ValueError(f"{what}: the model expects {input_dim} features per step, got {arr.shape[2]} "
                         f"(shape {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.float32)


class _Input:
    """A batch as the C++ network takes it: `rows` = samples * steps rows of
    `features`, plus how to shape outputs and flatten targets. Sequence input
    (batch, time, features) -- or (batch, time) token ids into an Embedding --
    is batch * time rows; a sequence output (no layer returning only its last
    state) is (batch, time, out) and its targets (batch, time[, out])."""

    __slots__ = ("rows", "samples", "steps", "seq", "seq_out")

    def __init__(self, rows, samples, steps, seq, seq_out):
        self.rows, self.samples, self.steps, self.seq, self.seq_out = rows, samples, steps, seq, seq_out

    @property
    def out_steps(self):
        return self.steps if self.seq_out else 1

    def shape_out(self, out):
        if self.seq_out:
            return out.reshape(self.samples, self.steps, out.shape[1])
        return out

    def flat_y(self, y, what="y"):
        """Targets of a sequence output, (batch, time[, k]) -> (batch * time[, k])."""
        if not self.seq_out:
            return y
        if isinstance(y, (tuple, list)):
            return type(y)(self.flat_y(a, what) for a in y)
        arr = np.asarray(y)
        if arr.ndim < 2 or arr.shape[:2] != (self.samples, self.steps):
            raise ValueError(f"{what}: the model outputs a sequence of shape (batch, time, out) = "
                             f"({self.samples}, {self.steps}, ...), so targets must have shape "
                             f"({self.samples}, {self.steps}) (labels) or ({self.samples}, {self.steps}, out); "
                             f"got {arr.shape}")
        return arr.reshape((self.samples * self.steps,) + arr.shape[2:])

    def per_sample(self, x):
        """The rows grouped per sample (for indexing samples)."""
        return x.reshape(self.samples, self.steps, x.shape[1]) if self.seq else x


class _LayerList(list):
    """``model.layers``: a plain list until the model is built, then read-only.

    Replacing, inserting or removing a layer after build used to be accepted
    and ignored by the built network (save then wrote another model, or
    train_step failed later); now it raises ValueError at once."""

    __slots__ = ("_frozen",)

    def __init__(self, *args):
        super().__init__(*args)
        self._frozen = False

    def _check(self, *args, **kwargs):
        if self._frozen:
            raise ValueError("model.layers cannot be changed after the model is built (the network, its "
                             "parameters and the optimizer state are fixed then); build a new "
                             "nv.Sequential with the layers you want (layer.copy() copies one)")

    def _guard(name):
        base = getattr(list, name)

        def method(self, *args, **kwargs):
            self._check()
            return base(self, *args, **kwargs)
        method.__name__ = name
        return method

    for _name in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
                  "__setitem__", "__delitem__", "__iadd__", "__imul__"):
        locals()[_name] = _guard(_name)
    del _name, _guard


class Sequential:
    """A stack of layers trained by one C++ call per step.

    ``Sequential(layers, input_dim=784)`` builds at once; without input_dim the
    model builds on the first data it sees. All parameters live in one 64-byte
    aligned arena; ``parameters()`` are zero-copy views of it.

    Threads: one model may be used from several threads; its calls are
    serialised by a per-model lock (docs/reliability.md). Different models
    run in parallel.
    """

    def __init__(self, layers=None, input_dim=None, name=None):
        self._lock = ModelLock()
        self._layers = _LayerList()
        self.name = name
        self.input_dim = None
        self._net = None
        self._arena = None
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self._opt_signature = None
        self.stop_training = False
        self._dist = None  # the distributed fit in progress (nerve.distributed), if any
        # Free JSON-serializable facts saved with the model (the CLI keeps its
        # class names and feature scaling here for `nerve predict`).
        self.metadata = {}
        for layer in layers or []:
            self.add(layer)
        if input_dim is not None:
            self.build(input_dim)

    # -- structure ------------------------------------------------------------
    @property
    def layers(self):
        """The layers, in order (read-only once the model is built)."""
        return self._layers

    @layers.setter
    def layers(self, value):
        if self.built:
            self._layers._check()
        self._layers = _LayerList()
        for layer in value:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, _layers.Layer):
            raise ValueError(f"Sequential takes nv.layers objects, got {type(layer).__name__}")
        if self._net is not None:
            raise ValueError("the model is already built: add layers before building (or before input_dim)")
        # The layer (and a Residual's body) share this model's lock; a layer
        # already in another model brings that model's lock along.
        for leaf in _leaf_layer_list(layer):
            if leaf._lock_obj is not None:
                self._lock.merge(leaf._lock_obj)
        for leaf in _leaf_layer_list(layer):
            leaf._lock_obj = self._lock
        self._layers.append(layer)

    @property
    def built(self):
        return self._net is not None

    @_locked
    def build(self, input_dim):
        """Builds every layer, places all new parameters in one arena, initializes them."""
        if self._net is not None:
            if input_dim != self.input_dim:
                raise ValueError(f"the model was built for {self.input_dim} input features, got {input_dim}")
            return
        if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim <= 0:
            raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
        if not self.layers:
            raise ValueError("the model has no layers")
        width = int(input_dim)
        for i, layer in enumerate(self.layers):
            try:
                width = layer.build(width)
            except ValueError as e:
                raise ValueError(f"layer {i} ({layer.describe()}): {e}") from None
        # Layers already holding parameters (shared with another model) keep them.
        fresh = [l for l in self.layers if l.param_size() and not l._params]
        self._arena = _core.Arena(sum(l.param_size() for l in fresh))
        offset = 0
        for layer in fresh:
            offset = layer._bind(self._arena, offset)
        seed, stream = _random.next_key()
        self._set_streams(stream)
        for layer in self.layers:
            layer._seed = seed
        self._net = _core.Network(int(input_dim), [l._core for l in self.layers])
        self._net.seed = seed
        self.input_dim = int(input_dim)
        self._layers._frozen = True
        if self.optimizer is not None:
            self._bind_optimizer()

    def _set_streams(self, stream):
        # Each layer's random draws (dropout, noise, rrelu) come from its own
        # stream; saved with the model so a loaded model continues identically.
        self._stream = int(stream)
        for i, layer in enumerate(self.layers):
            layer._core.stream = (self._stream << 16) + i

    @property
    def output_dim(self):
        return self.layers[-1].output_dim if self.built else None

    # -- sequences -------------------------------------------------------------
    def _sequence_model(self):
        return any(_layers._is_sequence_layer(leaf) for l in self.layers for leaf in _leaf_layer_list(l))

    def _input(self, x, what="x"):
        """(x as (rows, features) float32, _Input): the model's input in C++ rows."""
        if self.layers and isinstance(self.layers[0], _layers.Embedding):
            ids = np.asarray(x)
            flat = self.layers[0].check_ids(ids, what)
            if not self.built:
                self.build(1)
            samples, steps = ids.shape
        elif np.ndim(x) == 3 or self._sequence_model():
            arr = _as_seq(x, self.input_dim, what)
            samples, steps, features = arr.shape
            flat = arr.reshape(samples * steps, features)
            if not self.built:
                self.build(features)
        else:
            flat = _as_x(x, self.input_dim, what)
            if not self.built:
                self.build(flat.shape[1])
            return flat, _Input(flat.shape[0], flat.shape[0], 1, False, False)
        # Whether the output keeps the steps is structural (a recurrent
        # layer with return_sequences=False keeps 1 of any number).
        seq_out = self._net.output_steps(2) == 2
        return flat, _Input(flat.shape[0], samples, steps, True, seq_out)

    def parameters(self):
        """Every parameter, in layer order (nv.Parameter objects)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def buffers(self):
        """Non-trainable state of every layer (BatchNorm running statistics), in layer order."""
        return [b for layer in self.layers for b in layer.buffers()]

    def trainable_parameters(self):
        # p.trainable too: a frozen sub-layer inside a trainable Residual stays frozen.
        return [p for layer in self.layers if layer.trainable for p in layer.parameters() if p.trainable]

    @_locked
    def get_weights(self):
        """Copies of every parameter value in layer order, then every layer
        buffer (BatchNorm running statistics), as Keras's get_weights includes
        non-trainable weights."""
        return [p.value.copy() for p in self.parameters()] + [b.copy() for b in self.buffers()]

    @_locked
    def set_weights(self, weights):
        """Writes values from get_weights() back (shapes checked first; nothing
        changes when one does not match)."""
        targets = [p.value for p in self.parameters()] + self.buffers()
        weights = list(weights)
        if len(weights) != len(targets):
            raise ValueError(f"set_weights: the model has {len(targets)} weight arrays (parameters and "
                             f"buffers), got {len(weights)}")
        arrays = [np.asarray(w) for w in weights]
        for i, (t, w) in enumerate(zip(targets, arrays)):
            if w.shape != t.shape:
                raise ValueError(f"set_weights: array {i} must have shape {t.shape}, got {w.shape}")
            # NaN, Inf, and finite float64 values beyond float32 (stored as Inf before).
            arrays[i] = _finite_float32(w, f"set_weights: array {i}")
        for t, w in zip(targets, arrays):
            t[...] = w

    def count_params(self):
        return sum(p.size for p in self.parameters())

    # -- compile ----------------------------------------------------------------
    @_locked
    def compile(self, optimizer="adam", loss="cross_entropy", metrics=None):
        """Sets the optimizer (an instance, or a name with default settings), the
        loss (name or nv.losses object) and metrics (e.g. ["accuracy"]).

        An optimizer instance belongs to one model: compiling a second model
        with it raises ValueError (its state and step count are the first
        model's; the first model would silently stop updating)."""
        opt = _optimizers.get(optimizer)
        owner = opt._model() if opt._model is not None else None
        if owner is not None and owner is not self:
            raise ValueError(f"this {type(opt).__name__} optimizer is already compiled into another model; an "
                             f"optimizer belongs to one model: pass a new instance (or a name such as "
                             f"'adam') to each model's compile")
        loss_fn = _losses.get(loss)
        if not isinstance(loss_fn, _losses.LossFunction):
            raise ValueError(f"{loss_fn.name!r} is a metric; compile needs a differentiable loss")
        mets = [_metrics.get(m) if isinstance(m, (str, dict)) else m for m in (metrics or [])]
        for m in mets:
            if not isinstance(m, (_losses.Metric, _metrics.Metric)):
                raise ValueError(f"unknown metric {m!r}")
        _check_output_for_loss(self.layers, loss_fn)
        self.optimizer, self.loss, self.metrics = opt, loss_fn, mets
        self._opt_signature = None
        if self.built:
            self._bind_optimizer()
        return self

    def _bind_optimizer(self):
        # Freezing or unfreezing a layer changes which tensors the optimizer
        # updates; state exists only for trainable ones.
        params = self.trainable_parameters()
        signature = tuple(id(p) for p in params)
        if signature != self._opt_signature:
            self.optimizer._attach(params)
            self._opt_signature = signature
        # The manual loop (forward, backward, optimizer.step) then behaves as
        # train_step: step() rebinds after freezing and applies constraints.
        self.optimizer._model = weakref.ref(self)
        self.optimizer._lock = self._lock  # its step() touches this model's parameters

    def _ready(self, x):
        if self.optimizer is None or self.loss is None:
            raise RuntimeError("call model.compile(optimizer=..., loss=...) before training")
        if not self.built:
            self.build(x.shape[1])
        _check_margin_pair(self.layers, self.loss)  # layers added after compile
        self._bind_optimizer()

    def _require_compiled(self):
        if self.optimizer is None or self.loss is None:
            raise RuntimeError("call model.compile(optimizer=..., loss=...) before training")

    def _logit_outputs(self):
        """True when a single output column is a logit (decided at 0 by accuracy)."""
        return self.loss is not None and self.loss.name == "binary_cross_entropy_with_logits"

    def _split_y(self, y, rows, check_label_range=True):
        return _losses.split_target(self.loss.name, (rows, self.output_dim), y, check_label_range)

    # -- training ----------------------------------------------------------------
    @_locked
    def train_step(self, x, y):
        """One fused C++ step on a batch: forward, loss, backward, penalties,
        update, constraints. Returns the loss (with weight penalties). A bad
        batch raises ValueError and changes nothing."""
        self._require_compiled()
        x, info = self._input(x)
        self._ready(x)
        labels, values = self._split_y(info.flat_y(y), info.samples * info.out_steps,
                                       check_label_range=False)  # the C++ step checks
        self.optimizer._before_step()
        loss, _ = self._net.train_step(x, labels, values, self.loss._spec, self.optimizer._core, False,
                                       steps=info.steps)
        return float(loss)

    @_locked
    def forward(self, x, training=False):
        """The model's output for x; with training=True, keeps what backward needs."""
        x, info = self._input(x)
        self._last_input = (info, np.shape(x)) if training else None
        return info.shape_out(self._net.forward(x, bool(training), info.steps))

    __call__ = forward

    @_locked
    def backward(self, grad, return_input_grad=False):
        """Back-propagates d loss / d output of the last forward; parameter
        gradients accumulate into .grad (as PyTorch). Returns d loss / d x when asked."""
        if not self.built:
            raise RuntimeError("call forward before backward")
        g = np.ascontiguousarray(grad, dtype=np.float32)
        last = getattr(self, "_last_input", None)
        info = last[0] if last is not None else None
        if info is not None and info.seq_out:
            if g.shape != (info.samples, info.steps, self.output_dim):
                raise ValueError(f"backward: expected a gradient of shape "
                                 f"{(info.samples, info.steps, self.output_dim)}, got {g.shape}")
            g = g.reshape(-1, self.output_dim)
        if g.ndim == 1 and self.output_dim == 1:
            g = g.reshape(-1, 1)
        dx = self._net.backward(g, True, bool(return_input_grad))
        if dx is not None and info is not None and info.seq:
            # d loss / d input in the input's shape (token ids: zeros, they have no gradient).
            dx = dx.reshape(info.samples, info.steps) if isinstance(self.layers[0], _layers.Embedding) \
                else dx.reshape(info.samples, info.steps, -1)
        # Weight penalties belong to the loss: their gradients join the data
        # gradients here, as inside train_step.
        self._net.regularize(True)
        return dx

    @_locked
    def predict(self, x, batch_size=256):
        """Outputs for x (evaluation mode), computed in batches."""
        x, info = self._input(x)
        return info.shape_out(self._net.predict(x, int(batch_size), info.steps))

    def predict_proba(self, x, batch_size=256):
        """Class probabilities for x, for models compiled with a classification loss.

        The logits losses take raw scores and apply the link themselves, so
        this applies the same link to ``predict(x)``: softmax over the columns
        for cross_entropy, focal and distillation (rows sum to 1);
        sigmoid for binary_cross_entropy_with_logits (per column: the
        probability of the positive class). binary_cross_entropy already takes
        probabilities, so its outputs are returned as they are. Other losses
        (mse, mae, huber, ...) are regressions and raise ValueError."""
        if self.loss is None:
            raise RuntimeError("call model.compile(...) before predict_proba: the loss decides how "
                               "outputs become probabilities")
        link = _PROBA_LINK.get(self.loss.name)
        if link is None:
            raise ValueError(f"predict_proba needs a classification loss (cross_entropy, focal, distillation, "
                             f"binary_cross_entropy[_with_logits]); this model is compiled with "
                             f"{self.loss.name!r}, whose outputs are not probabilities: use predict")
        out = self.predict(x, batch_size).astype(np.float64)
        if link == "scaled_softmax":  # cosface / arcface: softmax(scale · cos θ), no margin at prediction
            out = out * float(self.loss._spec_params["scale"])
            link = "softmax"
        if link == "softmax":
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out /= out.sum(axis=-1, keepdims=True)
        elif link == "sigmoid":
            out = 0.5 * (1.0 + np.tanh(0.5 * out))  # = 1 / (1 + exp(-z)) without overflow
        return out.astype(np.float32)

    @_locked
    def evaluate(self, x, y, batch_size=256, verbose=0):
        """{"loss": ..., metric: ...} on (x, y); the loss includes weight penalties, as in fit."""
        if self.loss is None:
            raise RuntimeError("call model.compile(...) before evaluate")
        x, info = self._input(x)
        y = info.flat_y(y)
        _, values = self._split_y(y, info.samples * info.out_steps)
        if values is not None and not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise ValueError(f"y contains NaN or Inf at row {row}")
        return self._evaluate_prepared(x, info, y, batch_size, verbose)

    def _evaluate_prepared(self, x, info, y, batch_size, verbose=0):
        """evaluate on x already in rows (_input) and y flattened (info.flat_y)."""
        pred = self._net.predict(x, int(batch_size), info.steps)
        logs = {"loss": self.loss.forward(pred, y) + self._net.regularize(False)}
        for m in self.metrics:
            logs[m.name] = m.forward(pred, y, self._logit_outputs())
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs

    @_locked
    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, callbacks=None, verbose=1, seed=None, augment=None, cache_frozen=False,
            sample_weight=None, class_weight=None, validation_split_mode="last", distributed=False,
            initial_epoch=0):
        """Trains for `epochs` passes over (x, y) in shuffled mini-batches.

        initial_epoch: the epoch to start at (Keras semantics): epochs
        ``initial_epoch .. epochs - 1`` run, and History and the callbacks see
        those indices. Everything random in an epoch is a function of the
        model's seed (or `seed`), the epoch index and the step count at the
        epoch's start (saved in model files), so N epochs, ``save``,
        ``load_model``, then ``fit(epochs=N + M, initial_epoch=N)`` gives the
        bits of one ``fit(epochs=N + M)`` (docs/training.md, "Resuming a run").

        float64 (or integer) inputs are converted to float32. Every input is
        checked before the first step (shapes, NaN/Inf, label range): bad data
        raises ValueError and trains nothing. Returns a History. Positions in
        error messages are 0-based (row r of x, column c), as numpy indexes them.

        validation_split: the fraction of rows held out for validation
        (``round(n * validation_split)`` rows). validation_split_mode says which:
        "last" (default, Keras's rule: the last rows, before any shuffling, so
        a script ported from Keras validates on the same rows, and time-ordered
        data never validates on rows older than the training ones); "random"
        (a random subset, drawn from `seed`); "stratified" (random within each
        class, so every class keeps its share: use it for class-sorted data,
        where "last" holds out one class only).

        sample_weight: per-row loss weights, shape (n,), finite and >= 0
        (Keras semantics): a batch's loss is sum_i w_i l_i / batch_size, so a
        weight of 2 counts a row twice and 0 ignores it. class_weight: a dict
        {class: weight} (or "balanced": n / (classes * count(class))) that
        multiplies each row's weight by the weight of its class (the label, or
        the arg-max of a one-hot target). Weighting applies to the training
        loss; the reported accuracy and validation metrics stay unweighted.

        augment: a callable ``augment(x_batch, rng) -> x_batch`` (e.g. an
        ``nv.augment.Compose``) applied to every training batch before the
        step, drawing from a generator keyed by (seed, epoch, global step), so the
        same seed gives the same run. Labels are untouched; validation data is
        not augmented.

        cache_frozen: when the layers before the first trainable one are all
        frozen (or parameter-free) and deterministic, their outputs are
        computed once for the training and validation sets and only the rest
        of the network runs per step. The same training as without caching:
        bit-identical with shuffle=False; with shuffling, equal up to float32
        rounding (a row's GEMM rounding depends on its position in the batch,
        ~1e-7). Raises ValueError when not applicable (a trainable layer 0,
        a random layer in the prefix, or augment=).

        distributed: True (or a ``nerve.distributed.Options``) trains
        data-parallel over MPI, one process per rank, each passing its own
        shard of rows: weights broadcast from rank 0, gradients averaged by one
        allreduce per step, batch_size rows per rank per step; epoch logs and
        validation averaged over the ranks (docs/distributed.md).
        """
        for name, v, lo in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("initial_epoch", initial_epoch, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self._require_compiled()
        x, info = self._input(x)
        self._ready(x)
        seq = info.seq
        if seq:
            for flag, what in ((cache_frozen, "cache_frozen=True"), (augment is not None, "augment="),
                               (distributed, "distributed=True"),
                               (class_weight is not None and info.seq_out, "class_weight= with a sequence output")):
                if flag:
                    raise ValueError(f"fit: {what} is not supported with sequence input yet")
            x = info.per_sample(x)  # (samples, steps, features): rows are drawn per sample
        n = info.samples
        self._fit_rows_per_sample = info.out_steps
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split_mode not in ("last", "random", "stratified"):
            raise ValueError(f"validation_split_mode must be 'last', 'random' or 'stratified', "
                             f"got {validation_split_mode!r}")
        weights = _sample_weights(sample_weight, class_weight, y, n)
        if validation_data is None and validation_split > 0:
            n_val = int(round(n * validation_split))
            if n_val == 0 or n_val == n:
                raise ValueError(f"validation_split={validation_split} leaves no training or validation rows")
            # Distillation targets are a (teacher_logits, labels) pair: split both.
            paired = self.loss.name == "distillation" and isinstance(y, (tuple, list))
            y_arr = tuple(y) if paired else np.asarray(y)
            train_rows, val_rows = _validation_rows(validation_split_mode, n, n_val, y_arr[1] if paired else y_arr,
                                                    seed)
            split = (lambda a: (a[train_rows], a[val_rows]))
            if paired:
                parts = [split(np.asarray(a)) for a in y_arr]
                y, y_val = tuple(p[0] for p in parts), tuple(p[1] for p in parts)
            else:
                y, y_val = split(y_arr)
            x, x_val = x[train_rows], x[val_rows]
            if weights is not None:
                weights = np.ascontiguousarray(weights[train_rows])
            validation_data = (x_val, y_val)
            n = x.shape[0]
            if seq:
                info = _Input(n * info.steps, n, info.steps, True, info.seq_out)
        labels, values = self._split_y(info.flat_y(y), n * info.out_steps)
        if weights is not None and info.out_steps > 1:
            weights = np.ascontiguousarray(np.repeat(weights, info.out_steps))  # one per output row
        val_seq = None  # sequences: (rows, _Input, flat y) of the validation data
        if validation_data is not None and seq:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be (x_val, y_val)")
            xv = validation_data[0]
            if isinstance(xv, np.ndarray) and xv.ndim == 3 and xv.dtype == np.float32 and \
                    isinstance(self.layers[0], _layers.Embedding):  # from validation_split: rows already
                vinfo = _Input(xv.shape[0] * xv.shape[1], xv.shape[0], xv.shape[1], True, info.seq_out)
                xv = np.ascontiguousarray(xv.reshape(-1, xv.shape[2]))
            else:
                xv, vinfo = self._input(xv, "validation x")
            yv = vinfo.flat_y(validation_data[1], "validation y")
            _, val_values = self._split_y(yv, vinfo.samples * vinfo.out_steps)
            if val_values is not None:
                _check_finite(val_values, "validation y")
            val_seq = (xv, vinfo, yv)
        elif validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be (x_val, y_val)")
            x_val = _as_x(validation_data[0], self.input_dim, "validation x")
            _check_finite(x_val, "validation x")
            _, val_values = self._split_y(validation_data[1], x_val.shape[0])  # checks shapes and labels now
            if val_values is not None:
                _check_finite(val_values, "validation y")
            validation_data = (x_val, validation_data[1])

        if augment is not None:
            if not callable(augment):
                raise ValueError(f"augment must be callable as augment(x_batch, rng), got {augment!r}")
            if cache_frozen:
                raise ValueError("cache_frozen=True cannot be combined with augment=: augmented inputs "
                                 "change every batch, so the frozen layers' outputs cannot be cached")
            check = getattr(augment, "check_input_dim", None)
            if check is not None:
                check(self.input_dim)

        history = History()
        cbs = list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, _callbacks.Callback):
                raise ValueError(f"callbacks must be nv.callbacks.Callback objects, got {type(cb).__name__}")
        # A backup is written after every other callback (the History too) has
        # seen the epoch, so it holds their state at the epoch's end.
        backups = [cb for cb in cbs if isinstance(cb, _callbacks.BackupAndRestore)]
        if len(backups) > 1:
            raise ValueError("fit takes at most one BackupAndRestore callback")
        cbs = [cb for cb in cbs if cb not in backups] + [history] + backups
        resumed = backups[0]._restore(self, cbs, bool(distributed)) if backups else None
        if resumed is not None:
            initial_epoch = max(int(initial_epoch), resumed["epoch"])
        # Frozen-prefix cache: decided (and refused) before anything trains.
        net, train_x, val_x, penalty = self._net, x, None, 0.0
        if cache_frozen:
            net, prefix_net, penalty = self._frozen_split()
            # Computed in batches of the training size: with shuffle=False every
            # row then sits where it sits in the uncached steps, and the GEMM
            # rounds it identically (bit-identical runs). Shuffled rows move
            # within GEMM tiles, which changes float32 rounding at the 1e-7 level.
            train_x = prefix_net.predict(x, batch_size)
            if validation_data is not None:
                val_x = prefix_net.predict(validation_data[0], max(256, batch_size))
        per_batch = any(cb.wants_batches() for cb in cbs) or self.optimizer.schedule is not None
        count = any(m.name in ("accuracy", "zero_one") for m in self.metrics)
        steps = -(-n // batch_size)

        def check_batches():
            # A layer that cannot take some batch size (BatchNorm: a last batch of
            # one row) fails here, before any step, not mid-epoch.
            self._net.check_batch(min(batch_size, n), True, info.steps)
            self._net.check_batch(n - (steps - 1) * batch_size, True, info.steps)

        # The C++ loop takes rows: a sequence sample is `steps` of them.
        x_rows = np.ascontiguousarray(train_x.reshape(-1, train_x.shape[-1])) if seq else train_x
        y_rows = info.flat_y(y) if seq else y

        dist = None
        if distributed:
            from . import distributed as _dist

            # Collective from here on: every rank runs the same steps (those the
            # largest shard needs); a failed check on any rank fails all of them.
            dist = _dist._Trainer(self, distributed, n, batch_size, validation_data is not None,
                                  lambda: (check_batches(), _dist._check_finite(train_x, values)))
            steps = dist.steps
            if dist.rank != 0:
                verbose = 0
        else:
            check_batches()
        self._dist = dist
        for cb in cbs:
            cb.set_model(self)
            cb.set_params({"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n,
                           "verbose": verbose, "initial_epoch": int(initial_epoch)})
            cb._set_fit_data(x, y)
        # Shuffling and augmentation draw from Philox keyed by (key, epoch, step
        # at the epoch's start): the model's seed and stream (saved with it)
        # unless `seed` is given. A pure function of the training state, so a
        # resumed run draws what the uninterrupted one drew, and consecutive
        # fit calls (steps differ) draw different orders.
        key = (int(dist.base_seed if dist is not None else self._net.seed), self._stream) if seed is None \
            else (int(seed), 0)
        progress = Progress(epochs, steps, verbose)
        # On a terminal, about 20 progress updates per epoch; otherwise the whole epoch in one call.
        chunk = 1 if per_batch else (max(1, steps // 20) if progress.live else steps)
        if augment is not None:
            # Augmented copies of at most ~8k rows at a time bound the memory.
            chunk = min(chunk, max(1, 8192 // batch_size))
        # BackupAndRestore(save_freq=k): runs of batches end at every k-th batch of an epoch.
        freq = backups[0].save_freq if backups and backups[0].save_freq != "epoch" else None
        if freq is not None:
            chunk = min(chunk, freq)
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin()
        mid = None  # (batch, step at the epoch's start, partial sums) of a backup taken inside an epoch
        if resumed is not None:
            backups[0]._restore_callbacks(cbs, resumed)
            if resumed.get("stop_training"):
                initial_epoch = max(initial_epoch, epochs)  # the backed-up run had stopped (EarlyStopping)
            elif resumed["batch"] and initial_epoch == resumed["epoch"]:
                mid = resumed["batch"], resumed["epoch_step"], resumed["partial"]
                shape = resumed.get("shape")
                if shape is not None and shape != [n, batch_size]:
                    # The epoch's order and batches depend on both: it cannot be continued otherwise.
                    raise _callbacks._bad_backup(backups[0], f"it was taken inside an epoch of {shape[0]} rows in "
                                                 f"batches of {shape[1]}; this fit has {n} rows in batches of "
                                                 f"{batch_size}")
                if mid[0] >= steps or int(self._net.step) != mid[1] + mid[0]:
                    raise _callbacks._bad_backup(backups[0], f"it was taken at batch {mid[0]} (step "
                                                 f"{int(self._net.step)}, epoch start {mid[1]}), which this "
                                                 f"fit's {steps} batches per epoch do not have")
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            progress.start_epoch(epoch)
            step0 = int(self._net.step) if mid is None else mid[1]
            if shuffle:
                gen = np.random.Generator(np.random.Philox(np.random.SeedSequence(
                    [key[0], key[1], 0x5348, epoch, step0])))
                order = gen.permutation(n).astype(np.int64)
            else:
                order = np.arange(n, dtype=np.int64)
            loss_sum, correct, seen = 0.0, 0, 0
            first = 0
            if mid is not None:  # resumed inside this epoch
                first, (loss_sum, correct, seen), mid = mid[0], mid[2], None
            while first < steps:
                nb = min(chunk, steps - first)
                if freq is not None:
                    nb = min(nb, freq - first % freq)
                rows = order[first * batch_size: min(n, (first + nb) * batch_size)]
                if per_batch:
                    for cb in cbs:
                        cb.on_batch_begin(first)
                    self.optimizer._before_step()
                if augment is not None and len(rows):
                    bx, blab, bval, brows = self._augmented(augment, key, epoch, step0 + first, rows,
                                                            batch_size, train_x, labels, values)
                    bw = None if weights is None else np.ascontiguousarray(weights[rows])
                else:
                    bx, blab, bval, brows, bw = train_x, labels, values, rows, weights
                if net is not self._net:
                    net.step = self._net.step
                if dist is not None:
                    batch_losses, batch_correct, sizes = dist.train_batches(
                        net, bx, blab, bval, brows, first, nb, self.loss._spec,
                        self.optimizer._core, count, bw)
                else:
                    batch_losses, batch_correct = net.train_batches(
                        x_rows if seq else bx, blab, bval, brows, batch_size, self.loss._spec,
                        self.optimizer._core, count, bw, steps=info.steps)
                if net is not self._net:
                    # The full network keeps the step count that keys random draws.
                    self._net.step = net.step
                    batch_losses = batch_losses + penalty
                if dist is None:
                    sizes = np.full(len(batch_losses), batch_size, dtype=np.float64)
                    sizes[-1] = len(rows) - batch_size * (len(batch_losses) - 1)
                loss_sum += float(np.dot(batch_losses, sizes))
                correct += int(batch_correct.sum())
                seen += len(rows)
                logs = self._train_logs(loss_sum, correct, seen, count)
                for cb in cbs:
                    cb.on_train_batches_end(first, batch_losses, logs)
                if per_batch:
                    for cb in cbs:
                        cb.on_batch_end(first, {**logs, "loss": float(batch_losses[-1])})
                progress.update(first + len(batch_losses), seen, logs)
                if dist is not None:
                    self.stop_training = dist.agree_stop(self.stop_training)
                if self.stop_training:
                    break
                first += nb
                if freq is not None and first % freq == 0 and first < steps:
                    backups[0]._backup(epoch, first, step0, (loss_sum, correct, seen), (n, batch_size))
            if dist is not None:
                # Every rank's rows: the same epoch logs (and decisions) everywhere.
                loss_sum, correct, seen = dist.epoch_logs(loss_sum, correct, seen)
                dist.sync_buffers()
            logs = self._train_logs(loss_sum, correct, seen, count)
            extra = [m for m in self.metrics if m.name not in ("accuracy", "zero_one")]
            if extra:
                # Metrics not counted inside the step: on the training rows at the epoch's end.
                pred = net.predict(x_rows, max(256, batch_size), info.steps)
                for m in extra:
                    logs[m.name] = m.forward(pred, y_rows, self._logit_outputs())
            if validation_data is not None:
                if val_seq is not None:
                    val = self._evaluate_prepared(val_seq[0], val_seq[1], val_seq[2], max(256, batch_size))
                elif val_x is not None:
                    val = self._evaluate_on(net, val_x, validation_data[1], max(256, batch_size))
                else:
                    val = self.evaluate(validation_data[0], validation_data[1], batch_size=max(256, batch_size))
                if dist is not None:
                    val = dist.validation_logs(val, len(validation_data[0]))
                logs.update({f"val_{k}": v for k, v in val.items()})
            progress.end_epoch(seen, logs)
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            if dist is not None:
                self.stop_training = dist.agree_stop(self.stop_training)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        if dist is not None:
            dist.finish()
            self._dist = None
        return history

    def _augmented(self, augment, key, epoch, first, rows, batch_size, x, labels, values):
        """Augmented copies of the rows of a run of batches. Each batch draws
        from its own generator keyed by (seed, stream, epoch, global step of
        the batch; `first` is the first batch's), so results do not depend on
        how batches are grouped into C++ calls, and a resumed run draws the same."""
        parts = []
        for b, start in enumerate(range(0, len(rows), batch_size)):
            idx = rows[start: start + batch_size]
            gen = np.random.default_rng([int(key[0]), int(key[1]), epoch, first + b])
            xb = augment(x[idx], gen)
            xb = np.asarray(xb)
            if xb.shape != (len(idx), x.shape[1]):
                raise ValueError(f"augment must return an array of shape {(len(idx), x.shape[1])} "
                                 f"(like its input), got {xb.shape}")
            parts.append(xb)
        bx = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0], dtype=np.float32)
        blab = None if labels is None else labels[rows]
        bval = None if values is None else np.ascontiguousarray(values[rows])
        return bx, blab, bval, np.arange(len(rows), dtype=np.int64)

    def _frozen_split(self):
        """(tail network, prefix network, prefix penalty) for cache_frozen, or ValueError.

        The prefix is every layer before the first one with trainable
        parameters. Each must give the same output in a training step as in
        inference: frozen layers run in inference mode anyway (a frozen batch
        norm uses its running statistics); parameter-free trainable layers must
        be deterministic (no dropout, noise or rrelu)."""
        first = next((i for i, l in enumerate(self.layers) if l.trainable and l.parameters()), None)
        if first is None:
            raise ValueError("cache_frozen=True: no layer has trainable parameters, there is nothing to train")
        if first == 0:
            raise ValueError(f"cache_frozen=True needs frozen leading layers, but layer 0 "
                             f"({self.layers[0].describe()}) is trainable; freeze it with "
                             f"layer.trainable = False or call fit without cache_frozen")
        for i, layer in enumerate(self.layers[:first]):
            if layer.trainable and not layer.deterministic_in_training:
                raise ValueError(f"cache_frozen=True: layer {i} ({layer.describe()}) before the first "
                                 f"trainable layer is random in training (deterministic_in_training is "
                                 f"False), so its output cannot be cached; freeze it (trainable=False runs "
                                 f"it in inference mode) or drop cache_frozen")
        prefix = _core.Network(self.input_dim, [l._core for l in self.layers[:first]])
        # The tail keeps its layers' random streams (set when the model was built) and the model's seed.
        tail = _core.Network(self.layers[first].input_dim, [l._core for l in self.layers[first:]])
        tail.seed = self._net.seed
        tail.step = self._net.step
        return tail, prefix, float(prefix.regularize(False))

    def _evaluate_on(self, net, x, y, batch_size):
        pred = net.predict(x, int(batch_size))
        logs = {"loss": self.loss.forward(pred, y) + self._net.regularize(False)}
        for m in self.metrics:
            logs[m.name] = m.forward(pred, y, self._logit_outputs())
        return logs

    def _train_logs(self, loss_sum, correct, seen, count):
        logs = {"loss": loss_sum / max(seen, 1)}
        for m in self.metrics:
            if m.name not in ("accuracy", "zero_one"):
                continue  # computed at the epoch's end (fit)
            # Sequence outputs count every step's row.
            acc = correct / max(seen * getattr(self, "_fit_rows_per_sample", 1), 1)
            logs[m.name] = 1.0 - acc if m.name == "zero_one" else acc
        return logs

    # -- description --------------------------------------------------------------
    def summary(self, print_fn=print):
        """Prints each layer's output width, parameters and whether it is frozen."""
        lines = [f'Model: "{self.name or "sequential"}"',
                 f"{'layer':<28}{'output':>10}{'params':>12}  {'trainable':<9}", "-" * 61]
        total = trainable = 0
        for i, layer in enumerate(self.layers):
            count = sum(p.size for p in layer.parameters())
            total += count
            trainable += count if layer.trainable else 0
            desc = layer.describe()
            act = getattr(layer, "activation", None)
            if act is not None and hasattr(act, "name"):
                desc += f"({act.name})"
            lines.append(f"{desc:<28}{str(layer.output_dim):>10}{count:>12,}  "
                         f"{'yes' if layer.trainable else 'frozen':<9}")
        lines += ["-" * 61, f"total params: {total:,}  trainable: {trainable:,}  frozen: {total - trainable:,}"]
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    # -- interop and inference (nerve/safetensors.py, nerve/inference.py) -------------
    def save_weights(self, path):
        """Writes every parameter and buffer to a safetensors file under stable
        names (``layers.{i}.kernel``, ``layers.{i}.running_mean``, ...; see
        nv.safetensors.model_tensors). Readable by safetensors and torch."""
        from . import safetensors
        safetensors.save_weights(self, path)

    def load_weights(self, path):
        """Reads weights written by save_weights into this (built, same-architecture)
        model; names, shapes and values are all checked before anything changes."""
        from . import safetensors
        safetensors.load_weights(self, path)

    def optimize_for_inference(self, **options):
        """A predict-only copy: BatchNorm folded into the Dense next to it, dropout
        and noise removed, pruned kernels run sparse (nv.inference.optimize)."""
        from . import inference
        return inference.optimize(self, **options)

    # -- files ------------------------------------------------------------------------
    def get_config(self):
        return {"input_dim": self.input_dim, "name": self.name,
                "layers": [{"class": type(l).__name__, "config": l.get_config()} for l in self.layers]}

    @_locked
    def save(self, path):
        """Writes architecture, weights and optimizer state to `path` (a zip of
        .npy arrays and JSON: no pickle, so loading never runs code). The file
        is written to a temporary name and renamed, so an interrupted save
        leaves any previous file intact. `path` may also be a binary file
        object opened for writing (``io.BytesIO()``, ``open(p, "wb")``): the
        model is written at its current position and the object stays open."""
        arrays = self._file_arrays()
        if hasattr(path, "write"):
            if isinstance(path, _io.TextIOBase):
                raise ValueError("model.save needs a binary file object (open(path, 'wb'), io.BytesIO()), "
                                 "got a text stream")
            np.savez(path, **arrays)
            return
        _atomic_savez(os.fspath(path), arrays)

    def _file_arrays(self, metadata=None, extra=None):
        """The members of the model file (name -> array). `metadata` replaces
        self.metadata in the file and `extra` adds float32 members (training
        backups: nv.callbacks.BackupAndRestore); load_model ignores extra members."""
        if not self.built:
            raise RuntimeError("build or train the model before saving it")
        config = {"format": "nerve-model", "format_version": 1, "nerve_version": __version__,
                  "model": self.get_config(), "net": {"seed": int(self._net.seed), "step": int(self._net.step),
                          "stream": self._stream}}
        metadata = self.metadata if metadata is None else metadata
        if metadata:
            config["metadata"] = metadata
        arrays = {"params": np.concatenate([p.value.reshape(-1) for p in self.parameters()]
                                           or [np.zeros(0, np.float32)])}
        buffers = self.buffers()
        if buffers:
            arrays["buffers"] = np.concatenate([b.reshape(-1) for b in buffers])
        if any(p._arena.has_mask for p in self.parameters()):
            # Pruning masks (1 keep, 0 pruned), one per value in parameter order.
            arrays["masks"] = np.concatenate(
                [p._arena.mask(p._offset, p.size) if p._arena.has_mask else np.ones(p.size, np.float32)
                 for p in self.parameters()])
        if self.optimizer is not None:
            self._bind_optimizer()  # state for exactly the tensors the saved config marks trainable
            state = self.optimizer.state_dict()
            config["compile"] = {
                "optimizer": {"class": state["class"], "config": state["config"]},
                # iterations, lr and the optimizer's own scalars (NAdam: nadam_mu_product)
                "optimizer_state": {**{k: v for k, v in state.items() if k not in ("class", "config", "slots")},
                                    "slots": list(state["slots"])},
                "loss": self.loss.get_config(),
                "metrics": [m.name if len(m.get_config()) == 1 else m.get_config() for m in self.metrics],
            }
            for name, arr in state["slots"].items():
                arrays[f"slot_{name}"] = arr
        arrays["config"] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)
        for name, arr in (extra or {}).items():
            arrays[name] = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
        return arrays

    def to_bytes(self):
        """The model file's bytes (what ``save`` writes); ``nv.load_model(io.BytesIO(b))`` reads them."""
        buf = _io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    # pickle and copy.deepcopy go through the model file: the payload is the
    # zip's bytes (arrays and JSON), so unpickling a model runs no model code
    # beyond load_model's fixed layer registry. An unbuilt model carries its
    # layer configs and compile settings.
    def __reduce__(self):
        if self.built:
            return (_model_from_bytes, (self.to_bytes(),))
        data = {"name": self.name,
                "layers": [{"class": type(l).__name__, "config": l.get_config()} for l in self.layers]}
        if self.optimizer is not None and self.loss is not None:
            data["compile"] = {"optimizer": {"class": type(self.optimizer).__name__,
                                             "config": self.optimizer.get_config()},
                               "loss": self.loss.get_config(), "metrics": [m.get_config() for m in self.metrics]}
        return (_model_from_bytes, (data,))

    def __deepcopy__(self, memo):
        fn, args = self.__reduce__()
        return fn(*args)


def _check_finite(arr, what):
    """ValueError naming the first non-finite entry as (row, column), 0-based."""
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad.reshape(arr.shape[0], -1))[0])
        raise ValueError(f"{what} contains {'NaN' if np.isnan(arr.reshape(arr.shape[0], -1)[r, c]) else 'Inf'} "
                         f"at row {r}, column {c} (0-based)")


def _class_of_rows(y):
    """Each row's class: the label, or the arg-max of a one-hot / probability row."""
    if isinstance(y, (tuple, list)) and len(y) == 2 and np.ndim(y[0]) == 2:
        y = y[1]  # distillation: (teacher_logits, labels)
    t = np.asarray(y)
    if t.ndim == 2 and t.shape[1] > 1:
        return t.argmax(axis=1)
    return t.reshape(len(t), -1)[:, 0] if t.ndim == 2 else t


def _sample_weights(sample_weight, class_weight, y, n):
    """float32 (n,) per-row loss weights, or None when neither is given."""
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n, np.float64)
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "fiub":
            raise ValueError(f"sample_weight must be numeric, got dtype {sw.dtype}")
        if sw.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},) (one weight per row of x), got {sw.shape}")
        sw = sw.astype(np.float64)
        if not np.all(np.isfinite(sw)):
            raise ValueError(f"sample_weight contains NaN or Inf at row {int(np.flatnonzero(~np.isfinite(sw))[0])}")
        if np.any(sw < 0):
            raise ValueError(f"sample_weight must be >= 0, got {sw[sw < 0][0]} at row {int(np.flatnonzero(sw < 0)[0])}")
        w *= sw
    if class_weight is not None:
        cls = _class_of_rows(y)
        if np.shape(cls) != (n,):
            raise ValueError(f"class_weight needs one class per row, got targets of shape {np.shape(y)}")
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
            values, counts = np.unique(cls, return_counts=True)
            class_weight = {v: n / (len(values) * c) for v, c in zip(values.tolist(), counts)}
        if not isinstance(class_weight, dict):
            raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', got "
                             f"{type(class_weight).__name__}")
        for k, v in class_weight.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(v) or v < 0:
                raise ValueError(f"class_weight[{k!r}] must be a finite number >= 0, got {v!r}")
        lookup = {(k.item() if isinstance(k, np.generic) else k): float(v) for k, v in class_weight.items()}
        w *= np.array([lookup.get(c, 1.0) for c in np.asarray(cls).tolist()], np.float64)
    return np.ascontiguousarray(w, dtype=np.float32)


def _validation_rows(mode, n, n_val, y, seed):
    """(train rows, validation rows) for validation_split, in their original order."""
    if mode == "last":
        return np.arange(n - n_val), np.arange(n - n_val, n)
    key = (0 if seed is None else int(seed), 1)
    gen = np.random.Generator(np.random.Philox(key=np.array(key, dtype=np.uint64)))
    if mode == "random":
        val = np.sort(gen.permutation(n)[:n_val])
    else:  # stratified: each class's share of the validation rows, by largest remainder
        cls = _class_of_rows(y)
        if np.shape(cls) != (n,):
            raise ValueError("validation_split_mode='stratified' needs one class per row")
        values, inverse = np.unique(np.asarray(cls), return_inverse=True)
        counts = np.bincount(inverse)
        share = counts * (n_val / n)
        take = np.floor(share).astype(int)
        for i in np.argsort(-(share - take), kind="stable")[: n_val - take.sum()]:
            take[i] += 1
        val = np.sort(np.concatenate([gen.permutation(np.flatnonzero(inverse == k))[:take[k]]
                                      for k in range(len(values))]))
    mask = np.ones(n, bool)
    mask[val] = False
    return np.flatnonzero(mask), val


# How predict_proba turns outputs into probabilities, per loss.
_PROBA_LINK = {"cross_entropy": "softmax", "focal": "softmax", "distillation": "softmax",
               "large_margin_softmax": "softmax", "sphereface": "softmax", "cosface": "scaled_softmax",
               "arcface": "scaled_softmax",
               "binary_cross_entropy_with_logits": "sigmoid", "binary_cross_entropy": "identity"}
# Losses that apply their own link to raw scores (logits), and the output
# activations that would make it apply twice.
_LOGIT_LOSSES = {"cross_entropy": "softmax", "focal": "softmax", "distillation": "softmax",
                 "binary_cross_entropy_with_logits": "sigmoid"}
_PROB_ACTIVATIONS = {"softmax", "sigmoid", "log_softmax", "hard_sigmoid"}


def _check_margin_pair(layers, loss_fn):
    """The margin losses need their head as the last layer (cosface / arcface
    take cos θ from a CosineDense; large_margin_softmax / sphereface are
    applied by their LargeMarginDense / SphereDense), and those two layers
    belong to their loss. (No layers yet: the C++ step checks the pair.)"""
    if not layers:
        return
    last = type(layers[-1]).__name__
    need = _layers.MARGIN_LAYERS_OF_LOSS.get(loss_fn.name)
    if need is not None and last not in need:
        raise ValueError(f"loss {loss_fn.name!r} needs a {' or '.join(need)} output layer (see docs/margin.md); "
                         f"the last layer is {layers[-1].describe()}")
    pair = _layers.MARGIN_LOSS_OF_LAYER.get(last)
    if pair is not None and loss_fn.name != pair:
        raise ValueError(f"a {last} output layer is trained with loss={pair!r} (it applies that loss's margin); "
                         f"got loss {loss_fn.name!r}. For a plain linear layer use Dense")


def _check_output_for_loss(layers, loss_fn):
    """A logits loss after a probability output layer applies the link twice
    (softmax of a softmax trains, but towards the wrong optimum and with tiny
    gradients); refuse it with the fix named, as binary_cross_entropy refuses logits."""
    _check_margin_pair(layers, loss_fn)
    if not layers or loss_fn.name not in _LOGIT_LOSSES:
        return
    act = getattr(layers[-1], "activation", None)
    name = getattr(act, "name", None)
    if name not in _PROB_ACTIVATIONS:
        return
    link = _LOGIT_LOSSES[loss_fn.name]
    alt = (f"; or keep the {name} output and use loss='binary_cross_entropy', which takes probabilities"
           if name in ("sigmoid", "hard_sigmoid") else "")
    raise ValueError(
        f"the last layer ({layers[-1].describe()}) applies activation {name!r}, but loss {loss_fn.name!r} "
        f"takes raw scores (logits) and applies {link} itself, so it would be applied twice. Fix: drop the "
        f"activation from the last layer (Dense(units) with activation=None) and use "
        f"model.predict_proba(x) for probabilities{alt}.")


def _model_from_bytes(data):
    """Unpickling helper: a model from the bytes of its model file (no code runs)."""
    if isinstance(data, dict):  # an unbuilt model: its architecture and compile settings only
        model = Sequential([_layers.LAYER_CLASSES[e["class"]].from_config(dict(e["config"]))
                            for e in data["layers"]], name=data.get("name"))
        if data.get("compile"):
            c = data["compile"]
            model.compile(optimizer=_optimizer_from_config(c["optimizer"]), loss=_losses.get(c["loss"]),
                          metrics=list(c["metrics"]))
        return model
    return load_model(_io.BytesIO(data))


def _optimizer_from_config(entry):
    opt_config = dict(entry["config"])
    if "betas" in opt_config:
        opt_config["betas"] = tuple(opt_config["betas"])
    return _optimizers.by_class_name(entry["class"])(**opt_config)


_TMP_PREFIX = ".nerve-"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def _remove_stale_temps(directory):
    """Deletes ``.nerve-<pid>-*.tmp`` files whose writing process is gone
    (a save interrupted by SIGKILL or a crash; ~the model's size each)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(_TMP_PREFIX) and name.endswith(".tmp")):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_savez(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        # Said here: mkstemp's own error would name the temporary file, not the target.
        raise FileNotFoundError(f"cannot save the model to {path}: the folder {directory} does not exist")
    _remove_stale_temps(directory)
    # The writer's pid is in the name, so a later save can tell a temporary
    # file left by a killed process (kill -9 runs no cleanup) from one that a
    # live process is still writing.
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)  # the rename itself reaches the disk, not only the data
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_MAX_CONFIG_BYTES = 16 << 20

# load_model's memory budget (bytes), the default of its max_bytes argument:
# what a file may make the loader allocate (parameters, their gradients, the
# optimizer's state slots, layer buffers and workspaces), checked from the
# sizes the file declares before anything is allocated. 8 GiB: ~350 million
# float32 parameters (24 bytes each with gradients, Adam's state and a mask).
# Pass max_bytes= to load larger models.
LOAD_MEMORY_BUDGET = 8 << 30
# The deflate format expands by at most ~1032:1; a compressed member claiming
# more than that ratio cannot hold the data it declares.
_MAX_DEFLATE_RATIO = 1032


class ModelFileError(ValueError):
    """A file that load_model cannot read: not a model file, corrupt, truncated,
    hostile, or larger than the memory budget. A ValueError subclass (existing
    ``except ValueError`` code keeps working); the underlying error, when there
    is one (zlib.error, EOFError, OSError, ...), is chained as ``__cause__``."""


def _archive_size(archive):
    fp = archive.zip.fp
    pos = fp.tell()
    try:
        return fp.seek(0, os.SEEK_END)
    finally:
        fp.seek(pos)


def _check_member(archive, name, values, total_size=None):
    """Refuses a member that cannot hold `values` float32 values: its declared
    size, its stored bytes, or where it lies in the archive. Checked before the
    arrays it fills are allocated, so a small file declaring a huge model fails
    at once instead of allocating (and zeroing) the declared size first."""
    info = archive.zip.getinfo(f"{name}.npy")
    need = 4 * values
    stored = info.compress_size if info.compress_type == zipfile.ZIP_STORED \
        else info.compress_size * _MAX_DEFLATE_RATIO
    if total_size is None:
        total_size = _archive_size(archive)
    if info.file_size < need or stored < need or info.header_offset + info.compress_size > total_size:
        raise ValueError(f"array {name!r} must hold {values} float32 values ({need} bytes), but the member "
                         f"holds {info.compress_size} bytes (declared {info.file_size}) in a file of "
                         f"{total_size} bytes")


def _npy_shape(archive, name):
    """The shape an .npy member declares, read from its header only."""
    with archive.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"array {name!r} has an unsupported .npy version {version}")
    return tuple(shape)


def _read_array(archive, name, max_values):
    info = archive.zip.getinfo(f"{name}.npy")
    if info.file_size > max_values * 4 + 4096:
        raise ValueError(f"array {name!r} is larger than the model needs")
    _check_member(archive, name, max_values)
    arr = archive[name]
    if arr.dtype != np.float32 or arr.ndim != 1 or arr.size != max_values:
        raise ValueError(f"array {name!r} has dtype {arr.dtype} and shape {arr.shape}, "
                         f"expected float32 ({max_values},)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"array {name!r} contains NaN or Inf")
    return arr


def load_model(path, compile=True, max_bytes=None):
    """Loads a model written by ``model.save``. The file is data only (JSON +
    .npy, read with allow_pickle=False; layer classes come from a fixed
    registry), so a hostile file can fail to load but never runs code.
    `path` may also be a binary file object (``io.BytesIO(data)``, ``open(p, "rb")``).

    Every size the file declares is checked before anything is allocated:
    against the bytes its members really hold, and against ``max_bytes``
    (default ``nv.model.LOAD_MEMORY_BUDGET``, 8 GiB) for everything the model
    would allocate. Any malformed file raises ``ModelFileError`` (a
    ``ValueError``) with the underlying error chained as ``__cause__``."""
    source = path
    path = getattr(path, "name", "<file object>") if hasattr(path, "read") else os.fspath(path)
    if not isinstance(path, str):
        path = "<file object>"
    budget = LOAD_MEMORY_BUDGET if max_bytes is None else max_bytes
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    try:
        archive = np.load(source if hasattr(source, "read") else path, allow_pickle=False)
    except Exception as e:  # OSError, BadZipFile, EOFError, zlib.error, NotImplementedError, ...
        raise ModelFileError(f"{path}: not a nerve model file ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path}: not a nerve model file (expected a zip archive)")
    with archive:
        try:
            return _load(archive, compile, int(budget))
        except Exception as e:  # whatever a hostile member makes the readers raise, chained
            raise ModelFileError(f"{path}: corrupt or incompatible nerve model file: "
                                 f"{type(e).__name__}: {e}") from e


def _leaf_layers(layer):
    """Layers inside `layer` (a Residual's body) plus itself, recursively."""
    return 1 + sum(_leaf_layers(l) for l in getattr(layer, "layers", None) or [])


def _file_int(value, what, limit=2 ** 63 - 1):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{what} must be an int in [0, {limit}], got {value!r}")
    return value


def _load(archive, compile, budget):
    if "config" not in archive.files:
        raise ValueError("no config record")
    if archive.zip.getinfo("config.npy").file_size > _MAX_CONFIG_BYTES:
        raise ValueError("config record too large")
    raw = archive["config"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("config record is not bytes")
    config = json.loads(raw.tobytes().decode("utf-8"))
    if not isinstance(config, dict) or config.get("format") != "nerve-model":
        raise ValueError("not a nerve model (format tag missing)")
    if config.get("format_version") != 1:
        raise ValueError(f"unsupported format_version {config.get('format_version')!r}")
    mcfg = config["model"]
    layers = []
    for entry in mcfg["layers"]:
        cls = _layers.LAYER_CLASSES.get(entry["class"])
        if cls is None:
            raise ValueError(f"unknown layer class {entry['class']!r}")
        if not isinstance(entry["config"], dict):
            raise ValueError("layer config must be a mapping")
        layers.append(cls.from_config(dict(entry["config"])))
    model = Sequential(layers, name=mcfg.get("name"))
    # Build the layers (no parameter memory yet) and check the weights record
    # holds exactly their parameter count before the arena is allocated, so a
    # file claiming huge layers fails fast instead of allocating first.
    input_dim = mcfg["input_dim"]
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim <= 0:
        raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
    # Building a layer allocates per-feature state (batch norm statistics and
    # workspaces, at most ~64 bytes a feature): bounded before each build.
    width, used = input_dim, 0
    for i, layer in enumerate(layers):
        used += 64 * width * _leaf_layers(layer)
        if used > budget:
            raise ValueError(f"layer {i} on {width} input features exceeds the memory budget of {budget} bytes "
                             f"(load_model's max_bytes)")
        width = layer.build(width)
    expected = sum(layer.param_size() for layer in layers)
    declared = _npy_shape(archive, "params")
    if declared != (expected,):
        raise ValueError(f"array 'params' has shape {declared}, the architecture needs ({expected},)")
    # Values and gradients, up to three optimizer slots, a pruning mask, and
    # the per-row buffers of a first batch (planned later, ~8 floats a feature).
    need = used + 4 * expected * (2 + 3 + 1) + 32 * sum(l.output_dim for l in layers)
    if need > budget:
        raise ValueError(f"the model needs ~{need} bytes ({expected} parameters), over the memory budget of "
                         f"{budget} bytes (load_model's max_bytes)")
    _check_member(archive, "params", expected)
    model.build(input_dim)
    params = model.parameters()
    total = sum(p.size for p in params)
    flat = _read_array(archive, "params", total)
    offset = 0
    for p in params:
        p.value = flat[offset: offset + p.size].reshape(p.shape)
        offset += p.size
    buffers = model.buffers()
    if buffers:
        flat = _read_array(archive, "buffers", sum(b.size for b in buffers))
        offset = 0
        for b in buffers:
            b[...] = flat[offset: offset + b.size]
            offset += b.size
    if "masks" in archive.files:
        flat = _read_array(archive, "masks", total)
        if not np.all((flat == 0) | (flat == 1)):
            raise ValueError("array 'masks' must hold only 0 and 1")
        offset = 0
        for p in params:
            m = flat[offset: offset + p.size]
            offset += p.size
            if not np.all(m == 1):
                p._arena.enable_mask()
                p._arena.mask(p._offset, p.size)[...] = m
        for p in params:
            p._arena.apply_mask()
    if isinstance(config.get("metadata"), dict):
        model.metadata = config["metadata"]
    net = config.get("net", {})
    model._net.seed = _file_int(net.get("seed", 0), "net seed", 2 ** 64 - 1)
    model._net.step = _file_int(net.get("step", 0), "net step")
    if "stream" in net:
        # Layer streams are stream << 16 + index, in 64 bits.
        model._set_streams(_file_int(net["stream"], "net stream", 2 ** 47 - 1))
    if compile and config.get("compile"):
        ccfg = config["compile"]
        optimizer = _optimizer_from_config(ccfg["optimizer"])
        opt_cls = type(optimizer)
        model.compile(optimizer=optimizer, loss=_losses.get(ccfg["loss"]), metrics=list(ccfg.get("metrics", [])))
        st = ccfg["optimizer_state"]
        slots = {name: _read_array(archive, f"slot_{name}", optimizer._core.total_size) for name in st["slots"]}
        optimizer.load_state_dict({**{k: v for k, v in st.items() if k != "slots"},
                                   "class": opt_cls.__name__, "slots": slots})
    return model
