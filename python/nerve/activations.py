"""Activation functions (C++ kernels), resolved once by name.

``nv.activations.get(name, **params)`` returns an :class:`ActivationFunction`
with ``forward(x)`` and ``backward(x, dy)`` on numpy arrays; the same names
are accepted by ``Dense(activation=...)`` and ``nv.layers.Activation``, where
the kernel is fused into the layer's tail. Semantics follow PyTorch's
functions of the same names. ``names()`` lists them with their parameters.
"""
import numpy as np

from . import _core
from ._names import check_params, resolve

_ROWS = _core.activation_registry()
_BY_NAME = {}
for _row in _ROWS:
    _BY_NAME[_row["name"]] = _row
    for _alias in _row["aliases"]:
        _BY_NAME[_alias] = _row

# Parameters given as strings or booleans in Python, numbers in the registry.
_CHOICES = {"approximate": {"none": 0.0, "tanh": 1.0}}


def names():
    """Canonical activation names with their aliases, parameters and formula."""
    return [dict(r) for r in _ROWS]


def _as_float32_2d(x, what="x"):
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


class ActivationFunction:
    """A resolved activation: ``forward(x)``, ``backward(x, dy)`` and ``__call__``."""

    def __init__(self, name, **params):
        key = resolve("activation", name, _BY_NAME)
        row = _BY_NAME[key]
        check_params("activation", row["name"], params, list(row["params"]))
        numeric = {}
        for k, v in params.items():
            if k in _CHOICES:
                if v not in _CHOICES[k]:
                    raise ValueError(f"{row['name']}: {k} must be one of {list(_CHOICES[k])}, got {v!r}")
                numeric[k] = _CHOICES[k][v]
            elif isinstance(v, (bool, np.bool_)):
                numeric[k] = float(v)
            elif isinstance(v, (int, float, np.integer, np.floating)):
                numeric[k] = float(v)
            else:
                raise ValueError(f"{row['name']}: parameter {k} must be a number, got {v!r}")
        self.name = row["name"]
        self.params = dict(params)
        self.width_factor = row["width_factor"]
        self._spec = _core.make_activation(self.name, numeric)
        # The backward kernel reads the forward output for these (the unit's
        # "derivative from the output" fact, in the C++ table).
        self._needs_y = bool(row["grad_from_output"])
        self._is_identity = self.name == "identity"
        self._passes_gradient = self._spec.passes_gradient

    def forward(self, x, training=False, seed=0, step=0):
        """y = f(x); rows are samples (1-D input is one row)."""
        if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous:
            # Already what the kernel takes: skip the conversions (~1 µs a call).
            if self._is_identity and x.size < (1 << 20):
                return x.copy()  # a small copy is cheapest without crossing into C++
            return _core.activation_forward(self._spec, x, training, seed, 0, step)
        arr = _as_float32_2d(x)
        flat = arr.ndim == 1
        if arr.ndim not in (1, 2):
            raise ValueError(f"x must be 1-D or 2-D, got shape {arr.shape}")
        y = _core.activation_forward(self._spec, arr.reshape(1, -1) if flat else arr, training, seed, 0, step)
        return y.reshape(-1) if flat else y

    def backward(self, x, dy, training=False, seed=0, step=0, y=None):
        """dL/dx given x and dL/dy.

        Derivatives that are functions of the output (sigmoid, tanh, relu,
        elu, softmax, ...) read y: pass the ``y`` that ``forward(x)`` returned
        to save recomputing it (as autograd saves it); derivatives of the
        input (gelu, swish, softplus, ...) never need it. For identity and
        straight-through binary_step the gradient passes unchanged: the
        result is ``dy`` itself (as float32), not a copy.
        """
        arr = _as_float32_2d(x)
        flat = arr.ndim == 1
        if arr.ndim not in (1, 2):
            raise ValueError(f"x must be 1-D or 2-D, got shape {arr.shape}")
        x2 = arr.reshape(1, -1) if flat else arr
        out_shape = (x2.shape[0], x2.shape[1] * self.width_factor)
        if y is not None:
            y2 = _as_float32_2d(y, "y")
            if y2.size != out_shape[0] * out_shape[1]:
                raise ValueError(f"y must have shape {out_shape} (the output of forward(x)), got {y2.shape}")
            y2 = y2.reshape(out_shape)
        elif self._needs_y or (training and self.name == "rrelu"):
            # (rrelu in training reads y too: a negative element's slope is y / x.)
            y2 = _core.activation_forward(self._spec, x2, training, seed, 0, step)
        else:
            y2 = x2  # not read by the kernel
        if np.size(dy) != out_shape[0] * out_shape[1]:
            raise ValueError(f"dy must have {out_shape[0] * out_shape[1]} elements (shape {out_shape}), "
                             f"got shape {np.shape(dy)}")
        dy2 = _as_float32_2d(dy, "dy").reshape(out_shape)
        if self._passes_gradient:
            # The derivative is 1 everywhere: dx is dy itself (float32, no
            # copy), as autograd passes the gradient of an identity through.
            return dy2.reshape(-1) if flat else dy2
        dx = _core.activation_backward(self._spec, x2, y2, dy2, training, seed, 0, step)
        return dx.reshape(-1) if flat else dx

    __call__ = forward

    def get_config(self):
        return {"name": self.name, **self.params}

    def __repr__(self):
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"activation({self.name!r}{args})"


def get(name="identity", **params):
    """An activation by name (aliases accepted); None means identity."""
    if isinstance(name, ActivationFunction):
        if params:
            raise ValueError("parameters cannot be given with an ActivationFunction instance")
        return name
    if name is None:
        name = "identity"
    if isinstance(name, dict):
        cfg = dict(name)
        return ActivationFunction(cfg.pop("name"), **cfg)
    return ActivationFunction(name, **params)
