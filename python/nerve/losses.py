"""Losses (C++ kernels; value and gradient in one pass) and metrics.

``nv.losses.get(name, **params)`` returns an object with ``forward(pred,
target)`` (the mean loss over the batch, PyTorch's "mean" reduction) and
``backward(pred, target)`` (d loss / d pred, shaped like pred). Targets:
integer class labels of shape (batch,) or float arrays shaped like pred;
distillation takes ``(teacher_logits, labels)``. ``accuracy`` and
``zero_one`` are metrics (forward only).

Defaults: ``huber(delta=1)``, ``smooth_l1(beta=1)`` (beta=0 is L1),
``cross_entropy(weight=None, label_smoothing=0)``, ``focal(gamma=2,
alpha=None)`` (a scalar alpha scales every row; gamma=0 is cross-entropy),
``distillation(temperature=4, alpha=0.5)``:
``alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) CE(student, labels)``
(Hinton, Vinyals & Dean 2015). The temperature defaults to 4, not 1: at T=1
the teacher's softmax is nearly one-hot on easy examples and says little more
than the label, and Hinton et al. report T in 2.5-4 working best for small
students. ``binary_cross_entropy`` takes probabilities in [0, 1] (values
outside raise ValueError) and clamps its logs at -100 like PyTorch.

Large-margin softmax (docs/margin.md; integer labels, softmax cross-entropy
of the margined logits, mean over the batch):
``cosface(scale=30, margin=0.35)`` (AM-Softmax, Wang et al. 2018: target
logit ``s (cos θ_y − m)``, others ``s cos θ_j``) and ``arcface(scale=64,
margin=0.5)`` (Deng et al. 2019: ``s cos(θ_y + m)``, and ``s (cos θ_y − m sin m)``
once θ_y + m > π, insightface's easy_margin=False fallback; cos θ clamped to
±(1 − 1e-7)) take cos θ from a ``CosineDense`` output layer.
``large_margin_softmax(margin=4, base=1000, gamma=2.5e-5, power=35,
lambda_min=0)`` (L-Softmax, Liu et al. 2016) and ``sphereface(margin=4,
base=1000, gamma=0.12, power=1, lambda_min=5)`` (A-Softmax, Liu et al.
2017) pair with ``LargeMarginDense`` / ``SphereDense``, which put
``r (λ cos θ_y + ψ(θ_y)) / (1 + λ)`` (``r = ‖x‖‖W_y‖``, ``ψ(θ) = (−1)^k cos(mθ)
− 2k`` on ``[kπ/m, (k+1)π/m]``, ``λ = max(lambda_min, base (1 + gamma
iter)^−power)``, iter = training step + 1 as the authors' Caffe counter)
into the label's logit during training; on its own the loss is the softmax
cross-entropy of the logits it is given.
"""
import difflib

import numpy as np

from . import _core
from ._names import check_params, resolve

_ROWS = _core.loss_registry()
_BY_NAME = {}
for _row in _ROWS:
    _BY_NAME[_row["name"]] = _row
    for _alias in _row["aliases"]:
        _BY_NAME[_alias] = _row

# Keras's loss names as aliases. nerve's cross-entropies take logits, so
# categorical_crossentropy / sparse_categorical_crossentropy mean Keras's
# from_logits=True (one-hot / probability targets, or integer labels; both go
# to cross_entropy, which takes either); with a softmax output layer compile
# refuses them and names the fix. binary_crossentropy is Keras's default
# from_logits=False: probabilities, i.e. nerve's binary_cross_entropy.
KERAS_ALIASES = {"categorical_crossentropy": "cross_entropy", "sparse_categorical_crossentropy": "cross_entropy",
                 "categorical_focal_crossentropy": "focal", "binary_crossentropy": "binary_cross_entropy",
                 "mean_squared_error": "mse", "mean_absolute_error": "mae", "huber_loss": "huber"}
for _alias, _canon in KERAS_ALIASES.items():
    _BY_NAME.setdefault(_alias, next(r for r in _ROWS if r["name"] == _canon))

DISTILLATION_TEMPERATURE = [r for r in _ROWS if r["name"] == "distillation"][0]["params"]["temperature"]

_LABEL_LOSSES = {"cross_entropy", "focal", "distillation", "cosface", "arcface", "large_margin_softmax",
                 "sphereface"}
_METRICS = {"accuracy": False, "acc": False, "zero_one": True}


def names():
    """Canonical loss names with aliases and parameters."""
    return [dict(r) for r in _ROWS] + [{"name": "accuracy", "metric": True}, {"name": "zero_one", "metric": True}]


def _pred_2d(pred):
    arr = np.asarray(pred)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"pred must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"pred must be 1-D or 2-D (batch x outputs), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("pred is empty")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def _labels(t, rows, classes, check_range=True):
    if t.ndim != 1 or t.shape[0] != rows:
        raise ValueError(f"labels: expected shape ({rows},), got {t.shape}")
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
            raise ValueError(f"labels must be an integer array (got {t.dtype}); use y.astype(np.int64)")
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    lab = np.ascontiguousarray(t, dtype=np.int64)
    if check_range and lab.size and (lab.min() < 0 or lab.max() >= classes):
        bad = int(np.flatnonzero((lab < 0) | (lab >= classes))[0])
        raise ValueError(f"label {int(lab[bad])} at row {bad} is outside [0, {classes})")
    return lab


def split_target(name, shape, target, check_label_range=True):
    """(labels or None, values or None) as the C++ kernels take them, for
    predictions of `shape` = (rows, cols). check_label_range=False leaves the
    range of class labels to the C++ step, which checks it (same message)
    before changing anything: two numpy reductions, ~2.5 µs of a batch-1 step."""
    rows, cols = shape
    if name == "distillation":
        if not (isinstance(target, (tuple, list)) and len(target) == 2):
            raise ValueError("distillation target must be (teacher_logits, labels)")
        teacher = np.ascontiguousarray(target[0], dtype=np.float32)
        if teacher.shape != (rows, cols):
            raise ValueError(f"teacher logits: expected shape {(rows, cols)}, got {teacher.shape}")
        return _labels(np.asarray(target[1]), rows, cols, check_label_range), teacher
    t = np.asarray(target)
    if t.dtype.kind not in "fiub":
        raise ValueError(f"target must be numeric, got dtype {t.dtype}")
    if name in _LABEL_LOSSES and t.ndim == 1:
        if cols < 2:
            # A softmax over one column is constantly 1: the loss would be 0 and nothing would train.
            raise ValueError(f"{name} needs at least 2 output columns (one per class), the predictions have "
                             f"{cols}; for binary labels with one output use binary_cross_entropy_with_logits")
        return _labels(t, rows, cols, check_label_range), None
    values = np.ascontiguousarray(t, dtype=np.float32)
    if values.shape != (rows, cols):
        if values.ndim == 1 and values.size == rows and cols == 1:
            values = values.reshape(rows, 1)
        elif name in _LABEL_LOSSES and t.shape == (rows, 1):
            # A column of labels: the usual fix is a flat label array, not one-hot targets.
            raise ValueError(f"{name}: target has shape {t.shape}, a column; class labels go as shape "
                             f"({rows},) (y.ravel()), or as one-hot / probability targets of shape {(rows, cols)}")
        else:
            raise ValueError(f"target: expected shape {(rows, cols)} (like pred), got {t.shape}")
    return None, values


class LossFunction:
    """A resolved loss with its parameters."""

    def __init__(self, name, weight=None, **params):
        key = _loss_key(name)
        if key in _METRICS:
            raise ValueError(f"{key!r} is a metric, not a differentiable loss")
        row = _BY_NAME[key]
        check_params("loss", row["name"], params, list(row["params"]))
        numeric = {}
        for k, v in params.items():
            if v is None:
                continue
            if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
                raise ValueError(f"{row['name']}: parameter {k} must be a number, got {v!r}")
            numeric[k] = float(v)
        cw = []
        if weight is not None:
            if not row["class_weight"]:
                takes = [r["name"] for r in _ROWS if r["class_weight"]]
                raise ValueError(f"weight= is a parameter of {' and '.join(takes)} only")
            cw = [float(w) for w in np.asarray(weight, dtype=np.float64).reshape(-1)]
        self.name = row["name"]
        self.params = dict(params)
        self.weight = None if weight is None else list(cw)
        self._spec = _core.make_loss(self.name, numeric, cw)
        self._spec_params = {**row["params"], **numeric}  # every parameter, defaults filled in

    def _run(self, pred, target, want_grad):
        pred2 = _pred_2d(pred)
        labels, values = split_target(self.name, pred2.shape, target)
        value, grad = _core.loss_forward_backward(self._spec, pred2, labels, values, want_grad)
        return value, grad, np.shape(pred)

    def forward(self, pred, target):
        """Mean loss over the batch (float)."""
        return float(self._run(pred, target, False)[0])

    def backward(self, pred, target):
        """d forward(pred, target) / d pred, shaped like pred."""
        _, grad, shape = self._run(pred, target, True)
        return grad.reshape(shape)

    def forward_backward(self, pred, target):
        value, grad, shape = self._run(pred, target, True)
        return float(value), grad.reshape(shape)

    __call__ = forward

    def get_config(self):
        cfg = {"name": self.name, **self.params}
        if self.weight is not None:
            cfg["weight"] = self.weight
        return cfg

    def __repr__(self):
        return f"loss({self.name!r}{''.join(f', {k}={v!r}' for k, v in self.params.items())})"


class Metric:
    """accuracy: fraction of rows whose arg-max matches the label (or the
    target's arg-max; one column: pred > 0.5 against target > 0.5).
    zero_one: 1 - accuracy."""

    def __init__(self, name):
        key = resolve("metric", name, _METRICS)
        self.name = "zero_one" if _METRICS[key] else "accuracy"

    def correct(self, pred2, target, logits=False):
        """Rows classified correctly. logits=True: a single output column is a
        logit, so its decision threshold is 0 instead of 0.5."""
        if isinstance(target, (tuple, list)) and len(target) == 2:
            target = target[1]  # distillation: (teacher_logits, labels)
        t = np.asarray(target)
        if t.ndim == 1 and t.dtype.kind in "iu":
            return _core.count_correct(pred2, _labels(t, pred2.shape[0], max(pred2.shape[1], 2)), None, logits)
        _, values = split_target("mse", pred2.shape, target)
        return _core.count_correct(pred2, None, values, logits)

    def forward(self, pred, target, logits=False):
        pred2 = _pred_2d(pred)
        acc = self.correct(pred2, target, logits) / pred2.shape[0]
        return 1.0 - acc if self.name == "zero_one" else acc

    __call__ = forward

    def backward(self, pred, target):
        raise ValueError(f"{self.name} is a metric: it has no gradient")

    def get_config(self):
        return {"name": self.name}


def _loss_key(name):
    """The loss (or accuracy metric) key of `name`; unknown names list the losses only."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key in _METRICS:
        return key
    try:
        return resolve("loss", name, _BY_NAME)
    except ValueError as e:
        close = difflib.get_close_matches(key, list(_METRICS), n=1, cutoff=0.7)
        if close and "did you mean" not in str(e):
            raise ValueError(f"unknown loss {name!r} — did you mean {close[0]!r}? (a metric, for "
                             f"compile(metrics=[...]); known losses: {', '.join(sorted(_BY_NAME))})") from None
        raise


def get(name, **params):
    """A loss (or metric) by name; aliases accepted (Keras's names too, see KERAS_ALIASES)."""
    if isinstance(name, (LossFunction, Metric)):
        return name
    if isinstance(name, dict):
        cfg = dict(name)
        return get(cfg.pop("name"), **cfg)
    key = _loss_key(name)
    if key in _METRICS:
        if params:
            raise ValueError(f"metric {key!r} takes no parameters")
        return Metric(key)
    return LossFunction(key, **params)
