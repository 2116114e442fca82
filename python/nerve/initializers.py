"""Weight initializers, seeded and thread-count invariant.

``nv.initializers.get(name, **params)(shape=(fan_in, fan_out), seed=0)``
returns a float32 array. Every draw comes from the counter-based Philox
generator keyed by (seed, stream, element), so a seed gives the same weights
on any number of threads. With ``seed=None`` the global seed
(``nv.manual_seed``) and a fresh stream are used.

Fans follow the Dense layout (fan_in, fan_out) = shape for 2-D shapes; for
1-D shapes fan_in = fan_out = size.

References: Glorot & Bengio (2010); He et al. (2015); LeCun et al. (1998,
"Efficient BackProp"); Klambauer et al. (2017) for LeCun-normal with SELU;
Saxe et al. (2014) for orthogonal.
"""
import math

import numpy as np

from . import _core, _random
from ._names import check_params, resolve

# std of a standard normal truncated to [-2, 2]; dividing σ by it makes the
# realised std of a ±2σ-truncated normal exactly σ (as Keras does).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _fans(shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _key(seed):
    if seed is None:
        return _random.next_key()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed), 0


class Initializer:
    """Base class: ``init(shape, seed=None) -> float32 array``; ``fill(out, seed)`` writes in place."""

    name = "initializer"

    def __call__(self, shape, seed=None, dtype=np.float32):
        if dtype not in (np.float32, "float32"):
            raise ValueError("nerve parameters are float32")
        shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must be non-negative, got {shape}")
        out = np.empty(shape, dtype=np.float32)
        self.fill(out, seed)
        return out

    def fill(self, out, seed=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"initializer({self.get_config()})"


class Constant(Initializer):
    name = "constant"

    def __init__(self, value=0.0):
        self.value = float(value)
        if not math.isfinite(self.value):
            raise ValueError("constant value must be finite")

    def fill(self, out, seed=None):
        out[...] = self.value

    def get_config(self):
        return {"name": self.name, "value": self.value}


class Zeros(Constant):
    name = "zeros"

    def __init__(self):
        super().__init__(0.0)

    def get_config(self):
        return {"name": self.name}


class Ones(Constant):
    name = "ones"

    def __init__(self):
        super().__init__(1.0)

    def get_config(self):
        return {"name": self.name}


def _flat(out):
    if not out.flags.c_contiguous or out.dtype != np.float32:
        raise ValueError("initializers fill C-contiguous float32 arrays")
    return out.reshape(-1)


class RandomNormal(Initializer):
    name = "random_normal"

    def __init__(self, mean=0.0, stddev=0.05):
        self.mean, self.stddev = float(mean), float(stddev)
        if self.stddev < 0:
            raise ValueError(f"stddev must be >= 0, got {stddev}")

    def fill(self, out, seed=None):
        s, stream = _key(seed)
        _core.fill_normal(_flat(out), s, stream, self.mean, self.stddev, 0.0)

    def get_config(self):
        return {"name": self.name, "mean": self.mean, "stddev": self.stddev}


class RandomUniform(Initializer):
    name = "random_uniform"

    def __init__(self, minval=-0.05, maxval=0.05):
        self.minval, self.maxval = float(minval), float(maxval)
        if not self.minval <= self.maxval:
            raise ValueError(f"need minval <= maxval, got {minval}, {maxval}")

    def fill(self, out, seed=None):
        s, stream = _key(seed)
        _core.fill_uniform(_flat(out), s, stream, self.minval, self.maxval)

    def get_config(self):
        return {"name": self.name, "minval": self.minval, "maxval": self.maxval}


class StandardUniform(Initializer):
    """U(−1/√fan_in, 1/√fan_in): the classic default (and PyTorch's Linear bias)."""

    name = "standard_uniform"

    def fill(self, out, seed=None):
        fan_in, _ = _fans(out.shape)
        limit = 1.0 / math.sqrt(max(fan_in, 1))
        s, stream = _key(seed)
        _core.fill_uniform(_flat(out), s, stream, -limit, limit)


class VarianceScaling(Initializer):
    """Draws with variance scale / n, n = fan_in, fan_out or their mean.

    distribution: "truncated_normal" (±2σ, σ corrected by 0.8796… so the
    realised std is √(scale/n)), "untruncated_normal", or "uniform"
    (U(±√(3·scale/n))). Keras semantics.
    """

    name = "variance_scaling"
    _modes = ("fan_in", "fan_out", "fan_avg")
    _dists = ("truncated_normal", "untruncated_normal", "uniform", "normal")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal"):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        mode = resolve("variance_scaling mode", mode, self._modes)
        distribution = resolve("variance_scaling distribution", distribution, self._dists)
        if distribution == "normal":
            distribution = "truncated_normal"
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def _variance(self, shape):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        return self.scale / max(n, 1.0)

    def fill(self, out, seed=None):
        var = self._variance(out.shape)
        s, stream = _key(seed)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            _core.fill_uniform(_flat(out), s, stream, -limit, limit)
        elif self.distribution == "untruncated_normal":
            _core.fill_normal(_flat(out), s, stream, 0.0, math.sqrt(var), 0.0)
        else:
            _core.fill_normal(_flat(out), s, stream, 0.0, math.sqrt(var) / TRUNCATED_NORMAL_STD, 2.0)

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "mode": self.mode, "distribution": self.distribution}


def _preset(cls_name, scale, mode, distribution, doc):
    class Preset(VarianceScaling):
        __doc__ = doc
        name = cls_name

        def __init__(self):
            super().__init__(scale, mode, distribution)

        def get_config(self):
            return {"name": self.name}

    Preset.__name__ = "".join(w.capitalize() for w in cls_name.split("_"))
    return Preset


GlorotUniform = _preset("glorot_uniform", 1.0, "fan_avg", "uniform",
                        "Xavier/Glorot uniform: U(±√(6/(fan_in+fan_out))) (Glorot & Bengio, 2010).")
GlorotNormal = _preset("glorot_normal", 1.0, "fan_avg", "untruncated_normal",
                       "Xavier/Glorot normal, untruncated: N(0, 2/(fan_in+fan_out)).")
HeUniform = _preset("he_uniform", 2.0, "fan_in", "uniform", "He/Kaiming uniform: U(±√(6/fan_in)) (He et al., 2015).")
HeNormal = _preset("he_normal", 2.0, "fan_in", "truncated_normal",
                   "He/Kaiming normal truncated at ±2σ with realised std √(2/fan_in).")
LecunUniform = _preset("lecun_uniform", 1.0, "fan_in", "uniform", "LeCun uniform: U(±√(3/fan_in)).")
LecunNormal = _preset("lecun_normal", 1.0, "fan_in", "truncated_normal",
                      "LeCun normal truncated at ±2σ with realised std √(1/fan_in): the SELU initializer.")


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times gain (Saxe et al., 2014): QR of a
    seeded Gaussian matrix with the signs of R's diagonal folded into Q."""

    name = "orthogonal"

    def __init__(self, gain=1.0):
        self.gain = float(gain)

    def fill(self, out, seed=None):
        if out.ndim < 2:
            raise ValueError("orthogonal needs a shape of at least 2 dimensions")
        rows = int(np.prod(out.shape[:-1]))
        cols = out.shape[-1]
        a = np.empty((max(rows, cols), min(rows, cols)), dtype=np.float32)
        s, stream = _key(seed)
        _core.fill_normal(a.reshape(-1), s, stream, 0.0, 1.0, 0.0)
        q, r = np.linalg.qr(a.astype(np.float64))
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        out[...] = (self.gain * q).reshape(out.shape).astype(np.float32)

    def get_config(self):
        return {"name": self.name, "gain": self.gain}


_REGISTRY = {
    "zeros": Zeros, "ones": Ones, "constant": Constant,
    "random_normal": RandomNormal, "normal": RandomNormal,
    "random_uniform": RandomUniform, "uniform": RandomUniform,
    "standard_uniform": StandardUniform,
    "glorot_uniform": GlorotUniform, "xavier_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "xavier_normal": GlorotNormal,
    "he_uniform": HeUniform, "kaiming_uniform": HeUniform,
    "he_normal": HeNormal, "kaiming_normal": HeNormal,
    "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal,
    "variance_scaling": VarianceScaling, "orthogonal": Orthogonal,
}


def names():
    return sorted(_REGISTRY)


def get(name, **params):
    """An initializer by name (aliases: xavier_* = glorot_*, kaiming_* = he_*)."""
    if isinstance(name, Initializer):
        return name
    if isinstance(name, dict):
        cfg = dict(name)
        return get(cfg.pop("name"), **cfg)
    key = resolve("initializer", name, _REGISTRY)
    cls = _REGISTRY[key]
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    check_params("initializer", key, params, allowed)
    return cls(**params)
