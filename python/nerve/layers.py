"""Layers. Each wraps a C++ layer; its parameters live in the model's arena
(or, for a layer used on its own, in an arena of its own).

Every layer has ``trainable`` (``False`` freezes it: no gradient, no update,
no optimizer state), ``forward(x, training=False)``, ``backward(dy) -> dx``
(parameter gradients accumulate, as in PyTorch) and ``parameters()``.
"""
import math

import numpy as np

from . import _core, _random, activations, constraints, initializers, regularizers
from ._locks import ModelLock, locked
from .parameter import Parameter


class Layer:
    """Base class. Subclasses implement ``_make_core(input_dim)`` and
    ``_param_specs()``; the base class handles parameters, freezing and the
    per-layer forward/backward."""

    def __init__(self, trainable=True, name=None):
        self._trainable = bool(trainable)
        self.name = name
        self._core = None
        self._params = []
        self.input_dim = None
        self.output_dim = None
        self._cache = None
        self._seed = 0
        self._step = 0
        self._pending = None  # parameter values a copy() carries until it is bound
        # Serialises threads using this layer (made on first standalone use);
        # a model that adds the layer shares its lock (nerve/_locks.py).
        self._lock_obj = None

    @property
    def _lock(self):
        if self._lock_obj is None:
            self._lock_obj = ModelLock()
        return self._lock_obj

    # -- building -----------------------------------------------------------
    @property
    def built(self):
        return self._core is not None

    def _make_core(self, input_dim):
        raise NotImplementedError

    def _param_specs(self):
        """[(attribute name, shape, kind, initializer)] in arena order."""
        return []

    def build(self, input_dim):
        """Creates the C++ layer for `input_dim` input features (parameters unbound)."""
        if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim <= 0:
            raise ValueError(f"{type(self).__name__}: input_dim must be a positive int, got {input_dim!r}")
        if self.built:
            if self.input_dim != input_dim:
                raise ValueError(f"{self.describe()} was built for {self.input_dim} input features, "
                                 f"not {input_dim}")
            return self.output_dim
        self._core = self._make_core(int(input_dim))
        self._core.trainable = self._trainable
        self.input_dim = int(input_dim)
        self.output_dim = int(self._core.out_features)
        return self.output_dim

    def param_size(self):
        # math.prod: exact Python ints (np.prod wraps around silently in int64).
        return sum(math.prod(int(d) for d in shape) for _, shape, _, _ in self._param_specs())

    def _bind(self, arena, offset, init=True):
        """Places this layer's parameters in `arena` from `offset`; returns the next offset."""
        self._params = []
        offsets = {}
        for attr, shape, kind, init_fn in self._param_specs():
            p = Parameter(_arena=arena, _offset=offset, _shape=shape, name=f"{attr}", kind=kind)
            p.trainable = self._trainable
            if self._pending is not None:
                p.value = self._pending[len(self._params)]
            elif init:
                init_fn.fill(p.value)
            offsets[attr] = offset
            setattr(self, attr, p)
            self._params.append(p)
            offset += p.size
        self._pending = None
        self._bind_core(arena, offsets)
        return offset

    def _bind_core(self, arena, offsets):
        pass

    def _ensure_standalone(self, input_dim):
        if not self.built:
            self.build(input_dim)
            # A layer used on its own draws its dropout/noise from the global
            # seed (nv.manual_seed) like everything else; a model re-keys it.
            self._seed, stream = _random.next_key()
            self._core.stream = stream
        if self.param_size() and not self._params:
            self._bind(_core.Arena(self.param_size()), 0)

    # True when forward(training=True) is a fixed function of the input row
    # (no dropout mask, noise, random slopes or batch statistics). fit's
    # cache_frozen relies on it for trainable parameter-free layers before
    # the first trainable one (frozen layers run in inference mode anyway).
    # Conservative default: a layer class must declare itself deterministic.
    deterministic_in_training = False

    def copy(self):
        """An independent layer with the same configuration and (when built)
        a copy of the weights: for transfer learning without sharing. The copy
        is built for the same input width; its parameters join the arena of
        the model it is added to (or an arena of its own when used alone)."""
        twin = type(self).from_config(self.get_config())
        if self.built:
            twin.build(self.input_dim)
            if self._params:
                twin._pending = [p.value.copy() for p in self._params]
            twin._copy_state_from(self)
        return twin

    def _copy_state_from(self, other):
        """Copies non-parameter state (e.g. batch-norm running statistics)."""
        for mine, theirs in zip(self._state_arrays(), other._state_arrays()):
            mine[...] = theirs

    def _state_arrays(self):
        """Writable numpy views of non-parameter state that training changes
        (the layer's buffers(), e.g. batch-norm running statistics), so
        copies carry it and diagnostics can restore it."""
        buffers = getattr(self, "buffers", None)
        return list(buffers()) if buffers is not None and self.built else []

    # -- the public per-layer interface ------------------------------------
    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        if self._core is not None:
            self._core.trainable = self._trainable
        for p in self._params:
            p.trainable = self._trainable

    def parameters(self):
        return list(self._params)

    def buffers(self):
        """Non-trainable state saved with the model (e.g. BatchNorm's running
        statistics), as writable float32 numpy views; [] for most layers."""
        return list(self._core.buffers()) if self._core is not None else []

    def forward(self, x, training=False):
        """y = layer(x) for a (batch, features) float32 array (other real dtypes are converted)."""
        x = np.asarray(x)
        shape = None  # (batch, steps) of a sequence input
        if isinstance(self, Embedding):
            shape = x.shape if x.ndim == 2 else None
            x = self.check_ids(x)
        elif x.ndim == 3:  # (batch, time, features): batch * time rows
            shape = x.shape[:2]
            x = x.reshape(-1, x.shape[2])
        elif isinstance(self, _Recurrent):
            raise ValueError(f"{self.describe()}: expected a 3-D (batch, time, features) input, got shape {x.shape}")
        if x.dtype.kind not in "fiub":  # as Sequential: bool and integers convert to 0/1 floats
            raise ValueError(f"{self.describe()}: x must be a real numeric array, got dtype {x.dtype}")
        # A private copy: backward reads it later, after the caller may have changed x.
        x = np.array(x, dtype=np.float32, order="C", copy=True)
        if x.ndim != 2:
            raise ValueError(f"{self.describe()}: expected a 2-D (batch, features) input, got shape {x.shape}")
        self._ensure_standalone(x.shape[1])
        # As in a model: a frozen layer runs as in evaluation (BatchNorm uses
        # its running statistics and leaves them alone).
        training = bool(training) and self._trainable
        if training:
            self._step += 1
        steps = 1 if shape is None else int(shape[1])
        y = self._core.forward_np(x, bool(training), self._seed, self._step, steps=steps)
        self._cache = (x, y, bool(training), steps, shape)
        if shape is not None and self._core.out_steps(2) == 2:
            return y.reshape(shape[0], shape[1], -1)
        return y

    forward = locked(forward)
    __call__ = forward

    @locked
    def backward(self, dy):
        """dL/dx for the last forward; parameter gradients are added to .grad."""
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: call forward before backward")
        x, y, training, steps, shape = self._cache
        dy = np.ascontiguousarray(dy, dtype=np.float32)
        if shape is not None and dy.ndim == 3:
            dy = dy.reshape(-1, dy.shape[2])
        if dy.shape != y.shape:
            raise ValueError(f"{self.describe()}: dy must have shape {y.shape}, got {dy.shape}")
        dx = self._core.backward_np(x, y, dy, training, self._seed, self._step, True, steps=steps)
        if shape is not None:
            dx = dx.reshape(shape) if isinstance(self, Embedding) else dx.reshape(shape[0], shape[1], -1)
        return dx

    # -- description and serialization -------------------------------------
    def describe(self):
        return self.name or type(self).__name__

    def get_config(self):
        cfg = {"trainable": self._trainable}
        if self.name:
            cfg["name"] = self.name
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Dense(Layer):
    """Fully connected: y = act(x W + b), W of shape (in_features, units).

    The bias and activation are one fused pass over the GEMM output.
    Defaults as Keras: glorot_uniform kernel, zero bias.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.kernel = None
        self.bias = None

    @property
    def deterministic_in_training(self):
        return self.activation.name != "rrelu"

    def _make_core(self, input_dim):
        core = _core.Dense(input_dim, self.units, self.activation._spec, self.use_bias)
        kr, br = self.kernel_regularizer, self.bias_regularizer
        core.set_penalties(kr.l1 if kr else 0.0, kr.l2 if kr else 0.0, br.l1 if br else 0.0, br.l2 if br else 0.0)
        if self.kernel_constraint is not None:
            core.set_max_norm(self.kernel_constraint.max_value, self.kernel_constraint.axis)
        return core

    def _param_specs(self):
        specs = [("kernel", (self.input_dim, self.units), "kernel", self.kernel_initializer)]
        if self.use_bias:
            specs.append(("bias", (self.units,), "bias", self.bias_initializer))
        return specs

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, offsets["kernel"], offsets.get("bias", 0))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation.get_config(), use_bias=self.use_bias,
                   kernel_initializer=self.kernel_initializer.get_config(),
                   bias_initializer=self.bias_initializer.get_config())
        if self.kernel_regularizer:
            cfg["kernel_regularizer"] = self.kernel_regularizer.get_config()
        if self.bias_regularizer:
            cfg["bias_regularizer"] = self.bias_regularizer.get_config()
        if self.kernel_constraint:
            cfg["kernel_constraint"] = self.kernel_constraint.get_config()
        return cfg


def clone(layer):
    """``layer.copy()``: an independent layer with the same config and weights."""
    if not isinstance(layer, Layer):
        raise ValueError(f"clone takes an nv.layers object, got {type(layer).__name__}")
    return layer.copy()


class Activation(Layer):
    """An activation as its own layer: ``Activation("leaky_relu", alpha=0.1)``.

    As API.md: the first argument, ``name``, is the activation's name (or an
    nv.activations object); the layer's own name is ``layer_name``.
    ``activation=`` is accepted as a synonym of ``name``."""

    def __init__(self, name="identity", trainable=True, layer_name=None, activation=None, **params):
        super().__init__(trainable=trainable, name=layer_name)
        self.activation = activations.get(activation if activation is not None else name, **params)

    @property
    def deterministic_in_training(self):
        return self.activation.name != "rrelu"

    def _make_core(self, input_dim):
        return _core.ActivationLayer(input_dim, self.activation._spec)

    def get_config(self):
        cfg = super().get_config()
        if "name" in cfg:
            cfg["layer_name"] = cfg.pop("name")
        cfg["activation"] = self.activation.get_config()
        return cfg


def _number(cls, name, value, lo, hi=None, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ValueError(f"{cls}: {name} must be a finite number, got {value!r}")
    value = float(value)
    bad = value < lo or (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        rng = f"[{lo}, {hi})" if hi_open else (f"[{lo}, {hi}]" if hi is not None else f">= {lo}")
        raise ValueError(f"{cls}: {name} must be in {rng}, got {value}")
    return value


class BatchNorm(Layer):
    """Batch normalization (Ioffe & Szegedy, 2015) with torch.nn.BatchNorm1d semantics.

    Training: ``y = γ·(x − μ_B)/√(σ²_B + eps) + β`` with the batch mean μ_B and
    the biased batch variance σ²_B; the running estimates move as
    ``running ← (1 − momentum)·running + momentum·statistic`` using the
    unbiased variance σ²_B·B/(B−1) (PyTorch's momentum convention: Keras's
    momentum=0.99 is momentum=0.01 here). Evaluation (and a frozen layer,
    ``trainable=False``): ``y = γ·(x − running_mean)/√(running_var + eps) + β``.
    γ (kind "scale", init 1) and β (kind "bias", init 0) are trainable;
    ``running_mean`` (init 0) and ``running_var`` (init 1) are buffers saved
    with the model, with ``num_batches_tracked``; ``momentum=None`` makes the
    running statistics the cumulative average over the batches seen (factor
    1/num_batches_tracked), as PyTorch. A training batch of one row raises
    ValueError, as PyTorch.
    """

    def __init__(self, momentum=0.1, eps=1e-5, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        # momentum=None: cumulative average of the batch statistics (PyTorch).
        self.momentum = None if momentum is None else _number("BatchNorm", "momentum", momentum, 0.0, 1.0)
        self.eps = _number("BatchNorm", "eps", eps, 0.0)
        if self.eps <= 0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps!r}")
        self.gamma = None
        self.beta = None

    def _make_core(self, input_dim):
        return _core.BatchNorm(input_dim, -1.0 if self.momentum is None else self.momentum, self.eps)

    def _param_specs(self):
        return [("gamma", (self.input_dim,), "scale", initializers.get("ones")),
                ("beta", (self.input_dim,), "bias", initializers.get("zeros"))]

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, offsets["gamma"], offsets["beta"])

    @property
    def running_mean(self):
        return self.buffers()[0] if self.built else None

    @property
    def running_var(self):
        return self.buffers()[1] if self.built else None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, eps=self.eps)
        return cfg


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014): in training each element is
    zeroed with probability ``rate`` and the kept ones scaled by 1/(1 − rate), so
    the expected value is unchanged; identity in evaluation (torch.nn.Dropout).
    Masks are keyed by (seed, layer, step, element): the same seed gives the
    same masks on any number of threads. ``rate`` in [0, 1)."""

    def __init__(self, rate=0.5, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.rate = _number("Dropout", "rate", rate, 0.0, 1.0, hi_open=True)

    def _make_core(self, input_dim):
        return _core.Dropout(input_dim, self.rate)

    def get_config(self):
        cfg = super().get_config()
        cfg["rate"] = self.rate
        return cfg


class AlphaDropout(Dropout):
    """Alpha dropout for self-normalizing (SELU) nets (Klambauer et al., 2017),
    torch.nn.AlphaDropout's formula: dropped units are set to α' = −λα ≈ −1.7581,
    then ``y = a·x̃ + b`` with ``a = ((1 − p)(1 + p·α'²))^(−1/2)`` and
    ``b = −a·α'·p``, which keeps zero mean and unit variance. Identity in
    evaluation. ``rate`` in [0, 1)."""

    def __init__(self, rate=0.1, trainable=True, name=None):
        Layer.__init__(self, trainable=trainable, name=name)
        self.rate = _number("AlphaDropout", "rate", rate, 0.0, 1.0, hi_open=True)

    def _make_core(self, input_dim):
        return _core.AlphaDropout(input_dim, self.rate)


class GaussianNoise(Layer):
    """Adds N(0, stddev²) noise in training only (Keras GaussianNoise); a
    regularizer and input augmentation. Identity in evaluation; dx = dy.
    Normals come from Box-Muller on 24-bit uniforms (tails beyond 5.8σ, a
    1e-8 event, are not drawn), keyed by (seed, layer, step, element)."""

    def __init__(self, stddev=0.1, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.stddev = _number("GaussianNoise", "stddev", stddev, 0.0)

    def _make_core(self, input_dim):
        return _core.GaussianNoise(input_dim, self.stddev)

    def get_config(self):
        cfg = super().get_config()
        cfg["stddev"] = self.stddev
        return cfg


class Residual(Layer):
    """A residual block ``y = x + f(x)`` (He et al., 2016), f the given stack of
    layers, which must map d input features back to d (checked when built).
    The sub-layers' parameters live in the model's arena; freezing the block
    freezes them all."""

    def __init__(self, layers, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        layers = list(layers) if isinstance(layers, (list, tuple)) else None
        if not layers:
            raise ValueError("Residual: expected a non-empty list of nv.layers objects")
        for l in layers:
            if not isinstance(l, Layer):
                raise ValueError(f"Residual takes nv.layers objects, got {type(l).__name__}")
        self.layers = layers
        if not self._trainable:
            for l in layers:
                l.trainable = False

    def _make_core(self, input_dim):
        width = input_dim
        for i, l in enumerate(self.layers):
            try:
                width = l.build(width)
            except ValueError as e:
                raise ValueError(f"Residual: layer {i} ({l.describe()}): {e}") from None
        if width != input_dim:
            raise ValueError(f"Residual: f must map {input_dim} features to {input_dim} so that "
                             f"x + f(x) is defined, but its layers give {width}")
        return _core.Residual([l._core for l in self.layers])

    def param_size(self):
        return sum(l.param_size() for l in self.layers)

    def _bind(self, arena, offset, init=True):
        for l in self.layers:
            if l.param_size() and not l._params:
                offset = l._bind(arena, offset, init)
        self._params = [p for l in self.layers for p in l.parameters()]
        if self._pending is not None:  # a copy(): the sub-layers take the original's weights
            for p, value in zip(self._params, self._pending):
                p.value = value
            self._pending = None
        return offset

    @Layer.trainable.setter
    def trainable(self, value):
        Layer.trainable.fset(self, value)
        for l in self.layers:
            l.trainable = value

    def get_config(self):
        cfg = super().get_config()
        cfg["layers"] = [{"class": type(l).__name__, "config": l.get_config()} for l in self.layers]
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        subs = []
        for entry in config.pop("layers"):
            sub_cls = LAYER_CLASSES.get(entry["class"])
            if sub_cls is None:
                raise ValueError(f"unknown layer class {entry['class']!r}")
            if not isinstance(entry["config"], dict):
                raise ValueError("layer config must be a mapping")
            subs.append(sub_cls.from_config(dict(entry["config"])))
        return cls(subs, **config)


def _positive_int(owner, what, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{owner}: {what} must be a positive int, got {v!r}")
    return int(v)


def _finite_float(owner, what, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"{owner}: {what} must be a finite number, got {v!r}")
    return float(v)


class PReLU(Layer):
    """Parametric ReLU (He et al. 2015, "Delving deep into rectifiers"):
    ``y = x if x > 0 else a * x`` with a learned slope ``a``.

    PyTorch ``nn.PReLU`` semantics: ``shared=True`` (default) learns one slope
    for all features (``num_parameters=1``); ``shared=False`` one slope per
    feature (column). Slopes start at ``init=0.25``. The gradient of ``a``
    sums ``x * dy`` over the elements with ``x <= 0``. The slope is a
    parameter of kind ``"scale"`` (exclude it from weight decay with
    ``exclude_from_weight_decay=("scale",)``, as He et al. recommend).
    """

    def __init__(self, init=0.25, shared=True, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.init = _finite_float("PReLU", "init", init)
        self.shared = bool(shared)
        self.alpha = None

    def _make_core(self, input_dim):
        return _core.PReLU(input_dim, self.shared)

    def _param_specs(self):
        shape = (1,) if self.shared else (self.input_dim,)
        return [("alpha", shape, "scale", initializers.Constant(self.init))]

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, offsets["alpha"])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(init=self.init, shared=self.shared)
        return cfg


class Swish(Layer):
    """Swish (Ramachandran et al. 2017, "Searching for activation functions"):
    ``y = x * sigmoid(beta * x)``.

    ``learnable=True`` (default) makes ``beta`` one trained scalar (a
    parameter of kind ``"scale"``, initialised to ``beta=1.0``), with
    ``d y / d beta = x^2 s (1 - s)``, ``s = sigmoid(beta x)``;
    ``learnable=False`` is the fixed swish (``beta = 1``: SiLU), the same as
    ``Activation("swish", beta=beta)``. beta -> inf approaches ReLU, beta = 0
    gives x / 2.
    """

    def __init__(self, beta=1.0, learnable=True, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.beta_init = _finite_float("Swish", "beta", beta)
        self.learnable = bool(learnable)
        self.beta = None

    def _make_core(self, input_dim):
        return _core.Swish(input_dim, self.beta_init, self.learnable)

    def _param_specs(self):
        if not self.learnable:
            return []
        return [("beta", (1,), "scale", initializers.Constant(self.beta_init))]

    def _bind_core(self, arena, offsets):
        if self.learnable:
            self._core.bind_params(arena, offsets["beta"])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(beta=self.beta_init, learnable=self.learnable)
        return cfg


class Maxout(Dense):
    """Maxout (Goodfellow et al. 2013): a Dense layer to ``units * pieces``
    columns, then the maximum over each unit's ``pieces`` columns.

    Grouping: unit ``j`` owns the consecutive columns ``j*pieces ...
    j*pieces + pieces - 1`` of ``z = x W + b`` (kernel shape
    ``(in_features, units * pieces)``), so ``y = z.reshape(batch, units,
    pieces).max(axis=2)``. Backward routes each unit's gradient to the piece
    that won the max (the first one on ties). Maxout learns a convex
    piecewise-linear activation; ``pieces=2`` with one piece fixed at zero is
    ReLU. Initializers, regularizers and max-norm as in :class:`Dense` (the
    glorot fans are those of the full ``(in, units * pieces)`` kernel).
    """

    def __init__(self, units, pieces=2, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, trainable=True, name=None):
        units = _positive_int("Maxout", "units", units)
        self.pieces = _positive_int("Maxout", "pieces", pieces)
        super().__init__(units, activation=None, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         kernel_constraint=kernel_constraint, trainable=trainable, name=name)
        self.activation = None

    def _make_core(self, input_dim):
        core = _core.Maxout(input_dim, self.units, self.pieces, self.use_bias)
        kr, br = self.kernel_regularizer, self.bias_regularizer
        core.inner.set_penalties(kr.l1 if kr else 0.0, kr.l2 if kr else 0.0,
                                 br.l1 if br else 0.0, br.l2 if br else 0.0)
        if self.kernel_constraint is not None:
            core.inner.set_max_norm(self.kernel_constraint.max_value, self.kernel_constraint.axis)
        return core

    def _param_specs(self):
        width = self.units * self.pieces
        specs = [("kernel", (self.input_dim, width), "kernel", self.kernel_initializer)]
        if self.use_bias:
            specs.append(("bias", (width,), "bias", self.bias_initializer))
        return specs

    def _bind_core(self, arena, offsets):
        self._core.inner.bind_params(arena, offsets["kernel"], offsets.get("bias", 0))

    def get_config(self):
        cfg = Layer.get_config(self)
        cfg.update(units=self.units, pieces=self.pieces, use_bias=self.use_bias,
                   kernel_initializer=self.kernel_initializer.get_config(),
                   bias_initializer=self.bias_initializer.get_config())
        if self.kernel_regularizer:
            cfg["kernel_regularizer"] = self.kernel_regularizer.get_config()
        if self.bias_regularizer:
            cfg["bias_regularizer"] = self.bias_regularizer.get_config()
        if self.kernel_constraint:
            cfg["kernel_constraint"] = self.kernel_constraint.get_config()
        return cfg


# -- sequences (docs/sequences.md) -------------------------------------------------------------
# A (batch, time, features) sequence runs through a model as batch * time rows,
# so every per-row layer (Dense, activations, Dropout, BatchNorm over all rows)
# applies to the last axis of a sequence unchanged.

MAX_VOCAB = 2 ** 24  # token ids travel as exact float32 values


class Embedding(Layer):
    """Token embeddings: ``y[b, t] = embeddings[ids[b, t]]`` (torch.nn.Embedding).

    The model's input is then an integer array of token ids of shape
    (batch, time), each in ``[0, vocab_size)`` (``vocab_size < 2**24``); the
    output is (batch, time, dim). Ids out of range, float ids and NaN raise
    ValueError. The table (``embeddings``, shape (vocab_size, dim), kind
    "kernel") starts as N(0, 1), as PyTorch, unless
    ``embeddings_initializer`` is given. Its gradient sums the output
    gradient over the positions holding each id (dense, as torch's default
    ``sparse=False``); the ids themselves have no gradient (zeros).
    """

    deterministic_in_training = True

    def __init__(self, vocab_size, dim, embeddings_initializer=None, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.vocab_size = _positive_int("Embedding", "vocab_size", vocab_size)
        if self.vocab_size >= MAX_VOCAB:
            raise ValueError(f"Embedding: vocab_size must be < 2**24 (ids travel as exact float32), got {vocab_size}")
        self.dim = _positive_int("Embedding", "dim", dim)
        self.embeddings_initializer = initializers.get(
            embeddings_initializer if embeddings_initializer is not None
            else {"name": "random_normal", "mean": 0.0, "stddev": 1.0})
        self.embeddings = None

    def _make_core(self, input_dim):
        if input_dim != 1:
            raise ValueError(f"Embedding takes one token id per step: build the model with input_dim=1 (or "
                             f"leave input_dim out), got input_dim={input_dim}")
        return _core.Embedding(self.vocab_size, self.dim)

    def _param_specs(self):
        return [("embeddings", (self.vocab_size, self.dim), "kernel", self.embeddings_initializer)]

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, offsets["embeddings"])

    def check_ids(self, ids, what="x"):
        """float32 (batch * time, 1) rows from integer ids of shape (batch, time); ValueError otherwise."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{what}: Embedding takes integer token ids, got dtype {ids.dtype} (convert with "
                             f".astype(np.int64) if the values are whole numbers)")
        if ids.ndim != 2:
            raise ValueError(f"{what}: Embedding takes token ids of shape (batch, time), got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"{what} is empty")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            pos = tuple(int(i) for i in np.argwhere(ids == bad)[0])
            raise ValueError(f"{what}: token id {bad} at position {pos} is out of range [0, {self.vocab_size})")
        return ids.astype(np.float32).reshape(-1, 1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(vocab_size=self.vocab_size, dim=self.dim,
                   embeddings_initializer=self.embeddings_initializer.get_config())
        return cfg


class _SumOfUniforms(initializers.Initializer):
    """U(-k, k) + U(-k, k): the distribution of torch's b_ih + b_hh (the one
    bias nerve keeps for both)."""

    name = "sum_of_uniforms"

    def __init__(self, k):
        self.k = float(k)

    def fill(self, out, seed=None):
        u = initializers.RandomUniform(-self.k, self.k)
        u.fill(out, seed)
        extra = np.empty_like(out)
        u.fill(extra, None if seed is None else seed + 1)
        out += extra

    def get_config(self):
        return {"name": "random_uniform", "minval": -self.k, "maxval": self.k}


class _Recurrent(Layer):
    """Shared parts of SimpleRNN, LSTM and GRU (one C++ layer, nerve/recurrent.hpp)."""

    _gates = 1
    _separate_recurrent_bias = False
    deterministic_in_training = True

    def __init__(self, units, return_sequences=False, bidirectional=False, kernel_initializer=None,
                 recurrent_initializer=None, bias_initializer=None, trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        owner = type(self).__name__
        self.units = _positive_int(owner, "units", units)
        self.return_sequences = bool(return_sequences)
        self.bidirectional = bool(bidirectional)
        # None: PyTorch's default, U(-1/sqrt(units), 1/sqrt(units)) for every weight.
        self.kernel_initializer = None if kernel_initializer is None else initializers.get(kernel_initializer)
        self.recurrent_initializer = (None if recurrent_initializer is None
                                      else initializers.get(recurrent_initializer))
        self.bias_initializer = None if bias_initializer is None else initializers.get(bias_initializer)

    @property
    def _cell(self):
        raise NotImplementedError

    def _make_core(self, input_dim):
        return _core.Recurrent(input_dim, self.units, self._cell, self.return_sequences, self.bidirectional)

    def _param_specs(self):
        k = 1.0 / math.sqrt(self.units)
        uniform = initializers.RandomUniform(-k, k)
        g = self._gates * self.units
        kinit = self.kernel_initializer or uniform
        rinit = self.recurrent_initializer or uniform
        binit = self.bias_initializer or (uniform if self._separate_recurrent_bias else _SumOfUniforms(k))
        specs = []
        for suffix in ("", "_reverse")[: 2 if self.bidirectional else 1]:
            specs += [("kernel" + suffix, (self.input_dim, g), "kernel", kinit),
                      ("recurrent_kernel" + suffix, (self.units, g), "kernel", rinit),
                      ("bias" + suffix, (g,), "bias", binit)]
            if self._separate_recurrent_bias:
                specs.append(("recurrent_bias" + suffix, (g,), "bias", self.bias_initializer or uniform))
        return specs

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, [offsets[attr] for attr, _, _, _ in self._param_specs()])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, return_sequences=self.return_sequences, bidirectional=self.bidirectional)
        for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            init = getattr(self, key)
            if init is not None:
                cfg[key] = init.get_config()
        return cfg


class SimpleRNN(_Recurrent):
    """Elman RNN (torch.nn.RNN): ``h_t = act(x_t W + h_{t-1} U + b)``, h_0 = 0.

    ``kernel`` = W_ih.T (in, units), ``recurrent_kernel`` = W_hh.T (units,
    units), ``bias`` = b_ih + b_hh. ``activation`` "tanh" (default) or
    "relu" (torch's ``nonlinearity``). Input (batch, time, features); output
    (batch, time, units) with ``return_sequences=True``, else the last state
    (batch, units). ``bidirectional=True`` adds a second set of weights
    (``kernel_reverse``, ...) reading the steps backwards and concatenates
    both outputs per step (2·units features); with return_sequences=False the
    output is torch's ``h_n`` of both directions (the reverse one after step 0).
    Default initializers as PyTorch: every weight U(-1/√units, 1/√units)
    (the bias the sum of two such draws, like b_ih + b_hh).
    """

    def __init__(self, units, activation="tanh", return_sequences=False, bidirectional=False,
                 kernel_initializer=None, recurrent_initializer=None, bias_initializer=None,
                 trainable=True, name=None):
        if activation not in ("tanh", "relu"):
            raise ValueError(f"SimpleRNN: activation must be 'tanh' or 'relu' (as torch.nn.RNN), got {activation!r}")
        self.activation_name = activation
        super().__init__(units, return_sequences, bidirectional, kernel_initializer, recurrent_initializer,
                         bias_initializer, trainable, name)

    _cell = property(lambda self: self.activation_name)

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation_name
        return cfg


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997; torch.nn.LSTM):

    ``[i, f, g, o] = x_t W + h_{t-1} U + b`` (gates in that order, each
    ``units`` wide), ``i, f, o = σ(·)``, ``g = tanh(·)``,
    ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``; h_0 = c_0 = 0.
    ``kernel`` = W_ih.T (in, 4·units), ``recurrent_kernel`` = W_hh.T (units,
    4·units), ``bias`` = b_ih + b_hh (4·units). Shapes, ``return_sequences``,
    ``bidirectional`` and initializers as :class:`SimpleRNN`.
    """

    _gates = 4
    _cell = "lstm"


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al. 2014), torch.nn.GRU's formulation:

    ``r = σ(x W_r + b_r + h U_r + rb_r)``, ``z = σ(x W_z + b_z + h U_z + rb_z)``,
    ``n = tanh(x W_n + b_n + r ⊙ (h U_n + rb_n))``, ``h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}``;
    h_0 = 0. ``kernel`` = W_ih.T (in, 3·units), ``recurrent_kernel`` = W_hh.T
    (units, 3·units), ``bias`` = b_ih, ``recurrent_bias`` = b_hh, gates
    (r, z, n). Shapes, ``return_sequences``, ``bidirectional`` and
    initializers as :class:`SimpleRNN`.
    """

    _gates = 3
    _cell = "gru"
    _separate_recurrent_bias = True


def _is_sequence_layer(layer):
    return isinstance(layer, (Embedding, _Recurrent))


class CosineDense(Layer):
    """Cosine classifier head: ``y_ij = cos θ_ij = <x_i/‖x_i‖, W[:, j]/‖W[:, j]‖>``.

    Both normalisations are ``v / max(‖v‖, eps)`` with ``eps = 1e-12``
    (``torch.nn.functional.normalize``), forward and backward; no bias. The
    kernel has shape ``(in_features, units)`` (glorot_uniform by default: only
    its directions matter). Train it with ``loss="cosface"`` or ``"arcface"``
    (which scale and add the margin themselves); ``predict`` returns cos θ, so
    the arg-max is the class. See docs/margin.md.
    """

    deterministic_in_training = True

    def __init__(self, units, kernel_initializer="glorot_uniform", trainable=True, name=None):
        super().__init__(trainable=trainable, name=name)
        self.units = _positive_int(type(self).__name__, "units", units)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.kernel = None

    def _make_core(self, input_dim):
        return _core.CosineDense(input_dim, self.units)

    def _param_specs(self):
        return [("kernel", (self.input_dim, self.units), "kernel", self.kernel_initializer)]

    def _bind_core(self, arena, offsets):
        self._core.bind_params(arena, offsets["kernel"])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, kernel_initializer=self.kernel_initializer.get_config())
        return cfg


class LargeMarginDense(CosineDense):
    """The layer half of the ``large_margin_softmax`` pair (L-Softmax, Liu et
    al. 2016): ``f = x W`` (no bias, W of shape ``(in_features, units)``).

    ``predict``/``evaluate`` and any forward outside ``fit``/``train_step``
    give the plain logits ``W·x``. In a training step with
    ``loss="large_margin_softmax"`` the label's logit becomes
    ``‖W_y‖‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)`` (ψ and the λ schedule: see
    ``nv.losses`` and docs/margin.md); the layer applies it because it needs
    ‖x‖ and ‖W_y‖, which the loss does not see.
    """

    _normalize = False
    deterministic_in_training = False  # its training output depends on the labels

    def _make_core(self, input_dim):
        return _core.MarginDense(input_dim, self.units, self._normalize)


class SphereDense(LargeMarginDense):
    """The layer half of the ``sphereface`` pair (A-Softmax, Liu et al. 2017):
    ``f = x Ŵ`` with L2-normalised weight columns ``Ŵ_j = W_j / max(‖W_j‖, 1e-12)``,
    i.e. ``‖x‖ cos θ_j``, which ``predict`` returns. In a training step with
    ``loss="sphereface"`` the label's logit becomes
    ``‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)``.
    """

    _normalize = True


# The loss each margin layer is trained with (and the layers each margin loss needs).
MARGIN_LOSS_OF_LAYER = {"LargeMarginDense": "large_margin_softmax", "SphereDense": "sphereface"}
MARGIN_LAYERS_OF_LOSS = {"cosface": ("CosineDense",), "arcface": ("CosineDense",),
                         "large_margin_softmax": ("LargeMarginDense",), "sphereface": ("SphereDense",)}


# Classes a model file may name: loading instantiates nothing else.
LAYER_CLASSES = {cls.__name__: cls for cls in (Dense, Activation, BatchNorm, Dropout, AlphaDropout,
                                                GaussianNoise, Residual, PReLU, Swish, Maxout,
                                                Embedding, SimpleRNN, LSTM, GRU, CosineDense,
                                                LargeMarginDense, SphereDense)}


def register(cls):
    """Makes a Layer subclass loadable from model files (by class name)."""
    LAYER_CLASSES[cls.__name__] = cls
    return cls
