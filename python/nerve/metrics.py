"""Metrics for ``compile(metrics=[...])`` and ``evaluate``: forward only, no gradient.

``nv.metrics.get(name, **params)`` returns an object with ``forward(pred,
target)`` (a float over the whole batch). Names and formulas (n rows, d
output columns, y the target, p the prediction, in float64):

- ``accuracy`` (aliases ``acc``, Keras's ``categorical_accuracy``,
  ``sparse_categorical_accuracy``, ``binary_accuracy``): arg-max of p equals
  the label (or the target's arg-max); one column: p > 0.5 against y > 0.5
  (p > 0 when the loss takes logits). ``zero_one``: 1 - accuracy.
- ``mae`` (``mean_absolute_error``): mean |p - y| over all n*d values.
- ``mse`` (``mean_squared_error``): mean (p - y)^2 over all n*d values.
- ``rmse`` (``root_mean_squared_error``): sqrt(mse).
- ``r2`` (``r2_score``, ``r_squared``): coefficient of determination,
  1 - sum (y - p)^2 / sum (y - mean(y))^2 per output column, averaged over
  the columns (scikit-learn's r2_score, multioutput="uniform_average"); a
  constant target column scores 1.0 if predicted exactly, else 0.0 (as
  scikit-learn).
- ``top_k_accuracy(k=5)`` (``top_k_categorical_accuracy``,
  ``sparse_top_k_categorical_accuracy``): the label is among the k largest
  scores of its row, i.e. fewer than k scores are strictly greater than the
  label's (a tie counts for the label). k >= number of classes gives 1.0.

Regression metrics take targets shaped like the prediction (or (n,) for one
output). In ``fit``, accuracy is counted inside the training step; the
other metrics are computed on the training rows at each epoch's end (one
extra forward pass in evaluation mode), and on the validation data.
"""
import numpy as np

from . import losses as _losses
from ._names import check_params, resolve

_ALIASES = {
    "mean_absolute_error": "mae", "mean_squared_error": "mse", "root_mean_squared_error": "rmse",
    "r2_score": "r2", "r_squared": "r2",
    "top_k_categorical_accuracy": "top_k_accuracy", "sparse_top_k_categorical_accuracy": "top_k_accuracy",
    "categorical_accuracy": "accuracy", "sparse_categorical_accuracy": "accuracy", "binary_accuracy": "accuracy",
    "acc": "accuracy",
}
_PARAMS = {"mae": {}, "mse": {}, "rmse": {}, "r2": {}, "top_k_accuracy": {"k": 5}, "accuracy": {}, "zero_one": {}}


def names():
    """Canonical metric names with their parameters and aliases."""
    return [{"name": n, "params": dict(p), "aliases": sorted(a for a, c in _ALIASES.items() if c == n)}
            for n, p in _PARAMS.items()]


def _values(pred, target):
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target)
    if t.dtype.kind not in "fiub":
        raise ValueError(f"target must be numeric, got dtype {t.dtype}")
    t = t.astype(np.float64)
    if p.ndim == 1:
        p = p.reshape(-1, 1)
    if t.ndim == 1 and p.shape[1] == 1:
        t = t.reshape(-1, 1)
    if t.shape != p.shape:
        raise ValueError(f"target: expected shape {p.shape} (like pred) or ({p.shape[0]},) for one output, "
                         f"got {t.shape}")
    return p, t


def mae(pred, target):
    """mean |pred - target| over all values."""
    p, t = _values(pred, target)
    return float(np.mean(np.abs(p - t)))


def mse(pred, target):
    """mean (pred - target)^2 over all values."""
    p, t = _values(pred, target)
    return float(np.mean((p - t) ** 2))


def rmse(pred, target):
    """sqrt(mse)."""
    return float(np.sqrt(mse(pred, target)))


def r2(pred, target):
    """1 - SS_res / SS_tot per output column, averaged (scikit-learn's r2_score)."""
    p, t = _values(pred, target)
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    per_col = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                       np.where(ss_res == 0, 1.0, 0.0))
    return float(per_col.mean())


def top_k_accuracy(pred, target, k=5):
    """Fraction of rows whose label is among the k highest scores (labels (n,) or one-hot targets)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be an int >= 1, got {k!r}")
    p = np.asarray(pred, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"top_k_accuracy needs scores of shape (n, classes) with classes >= 2, got {p.shape}")
    t = np.asarray(target)
    if t.ndim == 2 and t.shape == p.shape:
        t = t.argmax(axis=1)
    if t.ndim != 1 or t.shape[0] != p.shape[0] or t.dtype.kind not in "iu":
        raise ValueError(f"top_k_accuracy: labels must be integers of shape ({p.shape[0]},), got "
                         f"{t.dtype} {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= p.shape[1]):
        bad = int(np.flatnonzero((t < 0) | (t >= p.shape[1]))[0])
        raise ValueError(f"label {int(t[bad])} at row {bad} is outside [0, {p.shape[1]})")
    own = p[np.arange(p.shape[0]), t]
    # The label is in the top k when fewer than k scores beat it strictly.
    rank = (p > own[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


_FUNCS = {"mae": mae, "mse": mse, "rmse": rmse, "r2": r2, "top_k_accuracy": top_k_accuracy}


class Metric:
    """A metric by name with its parameters: ``forward(pred, target)`` -> float."""

    def __init__(self, name, **params):
        key = resolve("metric", name, {**_PARAMS, **_ALIASES})
        key = _ALIASES.get(key, key)
        if key in ("accuracy", "zero_one"):
            raise ValueError(f"{key!r} is nv.losses.Metric; use nv.metrics.get({key!r})")
        check_params("metric", key, params, list(_PARAMS[key]))
        self.name = key
        self.params = {**_PARAMS[key], **params}

    def forward(self, pred, target, logits=False):
        if isinstance(target, (tuple, list)) and len(target) == 2:
            target = target[1]  # distillation: (teacher_logits, labels)
        return _FUNCS[self.name](pred, target, **self.params)

    __call__ = forward

    def backward(self, pred, target):
        raise ValueError(f"{self.name} is a metric: it has no gradient")

    def get_config(self):
        return {"name": self.name, **{k: v for k, v in self.params.items() if v != _PARAMS[self.name][k]}}

    def __repr__(self):
        return f"metric({self.name!r}{''.join(f', {k}={v!r}' for k, v in self.params.items())})"


def get(name, **params):
    """A metric by name (aliases accepted) or config dict; metric objects pass through."""
    if isinstance(name, (Metric, _losses.Metric)):
        return name
    if isinstance(name, dict):
        cfg = dict(name)
        return get(cfg.pop("name"), **cfg)
    key = resolve("metric", name, {**_PARAMS, **_ALIASES})
    key = _ALIASES.get(key, key)
    if key in ("accuracy", "zero_one"):
        if params:
            raise ValueError(f"metric {key!r} takes no parameters")
        return _losses.Metric(key)
    return Metric(key, **params)
