"""nv.Parameter: a tensor with a gradient, living in a 64-byte aligned arena."""
import math

import numpy as np

from . import _core


def finite_float32(value, what):
    """`value` as float32, refusing NaN, Inf and finite values beyond the
    float32 range (+-3.4e38), which the conversion would turn into Inf."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        big = float(np.max(np.abs(arr[~np.isfinite(out)].astype(np.float64))))
        raise ValueError(f"{what} holds {big:g}, beyond the float32 range (|x| <= {np.finfo(np.float32).max:.4g})")
    return out


class Parameter:
    """A trainable tensor.

    ``value`` and ``grad`` are float32 numpy views (zero-copy) of the arena that
    holds the parameter; assigning ``p.value = array`` copies into that storage.
    ``Parameter(np.ndarray)`` makes a standalone parameter with its own arena,
    usable with any optimizer (torch.optim style).
    """

    def __init__(self, value=None, *, name="", kind="kernel", _arena=None, _offset=0, _shape=None):
        if _arena is None:
            if value is None:
                raise ValueError("Parameter needs an initial value")
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"Parameter value must be numeric, got dtype {arr.dtype}")
            value = arr = finite_float32(arr, "Parameter value")
            _shape = arr.shape
            _arena = _core.Arena(int(arr.size))
            _offset = 0
        size = math.prod(int(d) for d in _shape)
        self._arena = _arena
        self._offset = int(_offset)
        self._size = size
        self._shape = tuple(_shape)
        self._value = _arena.values(self._offset, size).reshape(self._shape)
        self._grad = _arena.grads(self._offset, size).reshape(self._shape)
        self.name = name
        self.kind = kind  # "kernel", "bias", "scale", ...: selects weight decay / penalties
        self.trainable = True
        if value is not None:
            self._value[...] = np.asarray(value, dtype=np.float32)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        # Checked like set_weights: NaN, Inf and values beyond float32 are refused.
        new = np.asarray(new)
        if new.shape != self._shape:
            raise ValueError(f"parameter {self.name or ''} has shape {self._shape}, got {new.shape}")
        self._value[...] = finite_float32(new, f"parameter {self.name or ''} value".replace("  ", " "))

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, new):
        self._grad[...] = new

    @property
    def shape(self):
        return self._shape

    @property
    def size(self):
        return self._size

    def numpy(self):
        """A copy of the value."""
        return self._value.copy()

    def _slice(self, decay=True):
        return (self._arena, self._offset, self._size, bool(decay))

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self._shape}, trainable={self.trainable})"
