"""Optimizers: torch.optim's names, defaults and update rules (Keras's for
FTRL), each one fused C++ kernel over the parameters' arena.

Use them on a model (``model.compile(optimizer=nv.optimizers.Adam(lr=1e-3))``)
or standalone on ``nv.Parameter`` objects, torch.optim style::

    opt = nv.optimizers.SGD([p], lr=0.1, momentum=0.9)
    p.grad[...] = g; opt.step(); opt.zero_grad()

Every optimizer also takes ``clipnorm`` (per tensor), ``clipvalue``,
``global_clipnorm`` (Keras meanings, applied to the gradients before the
update in that order and written back into ``.grad``), ``schedule=`` (a
function of the step t counted from 0, replacing a fixed lr; ``nv.schedules``
classes are saved with the model), and ``exclude_from_weight_decay`` (parameter kinds such as
``("bias", "scale")``, or a predicate on a Parameter) for optimizers with
weight decay.
"""
import functools
import numbers

import numpy as np

from . import _core
from . import schedules as _schedules
from ._names import check_params, resolve
from .parameter import Parameter


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class Optimizer:
    """Base class: holds the parameters, the C++ optimizer and the schedule."""

    _kind = None
    # python argument name -> OptHyper field
    _fields = {}

    def __init_subclass__(cls, **kwargs):
        # learning_rate= (Keras's name) is an alias of lr= in every optimizer:
        # each subclass's __init__ is wrapped once to translate it.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self, *args, learning_rate=None, **kw):
            if learning_rate is not None:
                if "lr" in kw or len(args) > 1:
                    raise ValueError(f"{cls.__name__}: give lr= or learning_rate= (its alias), not both")
                kw["lr"] = learning_rate
            init(self, *args, **kw)

        cls.__init__ = __init__

    def __init__(self, params=None, *, lr, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 schedule=None, exclude_from_weight_decay=None, **hyper):
        if isinstance(schedule, dict):  # a saved schedule (model files): whitelisted classes only
            schedule = _schedules.deserialize(schedule)
        self.schedule = schedule
        if schedule is not None and not callable(schedule):
            raise ValueError("schedule must be callable: schedule(step) -> learning rate")
        allowed = ["lr", *self._fields, "clipnorm", "clipvalue", "global_clipnorm", "schedule",
                   "exclude_from_weight_decay"]
        check_params("optimizer", type(self).__name__, hyper, allowed)
        self._config = {"lr": lr, **hyper}
        self._clip = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if isinstance(exclude_from_weight_decay, str):
            exclude_from_weight_decay = (exclude_from_weight_decay,)
        if exclude_from_weight_decay is not None and not callable(exclude_from_weight_decay):
            try:
                exclude_from_weight_decay = tuple(exclude_from_weight_decay)
            except TypeError:
                raise ValueError("exclude_from_weight_decay must be parameter kinds such as ('bias', 'scale') "
                                 f"or a predicate on a Parameter, got {exclude_from_weight_decay!r}") from None
            if not all(isinstance(k, str) for k in exclude_from_weight_decay):
                raise ValueError(f"exclude_from_weight_decay kinds must be strings, got {exclude_from_weight_decay!r}")
        self._exclude = exclude_from_weight_decay
        h = _core.OptHyper()
        lr0 = schedule(0) if schedule is not None else lr
        h.lr = _number("lr", lr0)
        for arg, value in hyper.items():
            field = self._fields[arg]
            if isinstance(field, tuple):  # betas=(b1, b2)
                if not isinstance(value, (tuple, list)) or len(value) != len(field):
                    raise ValueError(f"{arg} must be a pair of numbers, got {value!r}")
                for f, v in zip(field, value):
                    setattr(h, f, _number(arg, v))
            elif isinstance(value, bool):
                setattr(h, field, value)
            else:
                setattr(h, field, _number(arg, value))
        for arg, value in self._clip.items():
            if value is not None:
                v = _number(arg, value)
                if v <= 0:
                    raise ValueError(f"{arg} must be > 0, got {v}")
                setattr(h, arg, v)
        self._core = _core.Optimizer(self._kind, h)
        self._model = None  # weak reference to the model compiled with this optimizer
        self.params = []
        self._arenas = []
        if params is not None:
            self._attach(params)

    # -- parameters ---------------------------------------------------------
    def _decays(self, p):
        if self._exclude is None:
            return True
        if callable(self._exclude):
            return not self._exclude(p)
        return p.kind not in self._exclude

    def _attach(self, params):
        params = list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise ValueError(f"optimizers take nv.Parameter objects, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears more than once in the optimizer's parameter list")
        # Rebinding (a layer frozen or unfrozen, compile called again) keeps the
        # state of every tensor that stays, and the step count: the trajectory
        # of the remaining parameters continues as if nothing had happened.
        kept = self._state_by_param() if self.params else None
        self.params = params
        # Adjacent tensors of one arena are merged into long runs for the
        # kernel, except with clipnorm, which is per tensor (Keras).
        merge = self._clip["clipnorm"] is None
        self._core.bind([p._slice(self._decays(p)) for p in params], merge)
        # Arenas whose pruning masks step() re-applies (nv.pruning), distinct, in order.
        self._arenas = list({id(p._arena): p._arena for p in params}.values())
        if kept is not None:
            slots, iterations, mu_product = kept
            for k, view in enumerate(self._slot_views()):
                for p, v in zip(params, view):
                    if id(p) in slots:
                        v[...] = slots[id(p)][k]
            self._core.iterations = iterations
            self._core.nadam_mu_product = mu_product

    def _slot_views(self):
        """Per slot, the views of each parameter's part: the state layout is the
        parameters' concatenation in list order (merged spans keep that order)."""
        views = []
        for i in range(len(self._core.slot_names)):
            flat, offset, parts = self._core.slot(i), 0, []
            for p in self.params:
                parts.append(flat[offset: offset + p.size])
                offset += p.size
            views.append(parts)
        return views

    def _state_by_param(self):
        per_slot = self._slot_views()
        slots = {id(p): [per_slot[k][j].copy() for k in range(len(per_slot))] for j, p in enumerate(self.params)}
        return slots, self._core.iterations, self._core.nadam_mu_product

    # -- the torch.optim interface -----------------------------------------
    @property
    def lr(self):
        """The learning rate of the next step (the scheduled value when a schedule is attached).

        Assigning it changes only the steps from then on (PyTorch's
        ``param_group["lr"] = ...``); with a schedule attached, the schedule
        sets it again before every step."""
        return self._core.lr

    @lr.setter
    def lr(self, value):
        self._core.lr = _number("lr", value)

    @property
    def iterations(self):
        """Steps taken."""
        return self._core.iterations

    def _before_step(self):
        if self.schedule is not None:
            self._core.lr = _number("scheduled lr", self.schedule(self._core.iterations))

    def step(self):
        """One update of every parameter from its .grad."""
        model = self._model() if self._model is not None else None
        if model is not None:
            model._bind_optimizer()  # a layer frozen or unfrozen since the last step
        if not self.params:
            raise RuntimeError("this optimizer has no parameters: pass them or compile a model with it")
        self._before_step()
        self._core.step()
        for arena in self._arenas:  # pruned weights stay exactly zero (as in the fused step)
            if arena.has_mask:
                arena.apply_mask()
        if model is not None:
            model._net.apply_constraints()  # max-norm after the update, as the fused step does

    def zero_grad(self):
        """Zeroes the gradients (of every parameter of the compiled model,
        frozen ones included, so a layer unfrozen later starts clean)."""
        model = self._model() if self._model is not None else None
        for p in (model.parameters() if model is not None else self.params):
            p.grad.fill(0.0)

    def state_dict(self):
        """Hyper-parameters, step count and state slots (copies)."""
        return {
            "class": type(self).__name__,
            "config": self.get_config(),
            "lr": self.lr,
            "iterations": int(self._core.iterations),
            "nadam_mu_product": float(self._core.nadam_mu_product),
            "slots": {name: self._core.slot(i).copy() for i, name in enumerate(self._core.slot_names)},
        }

    def load_state_dict(self, state):
        """Restores what state_dict() returned; the same trajectory continues."""
        if not isinstance(state, dict) or state.get("class") != type(self).__name__:
            got = state.get("class") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state is for {got!r}, not {type(self).__name__}")
        missing = [k for k in ("iterations", "lr", "slots") if k not in state]
        if missing:
            raise ValueError(f"optimizer state lacks {missing}; expected what state_dict() returns")
        slots = state.get("slots", {})
        names = list(self._core.slot_names)
        if sorted(slots) != sorted(names):
            raise ValueError(f"state slots {sorted(slots)} do not match this optimizer's {sorted(names)}")
        for i, name in enumerate(names):
            arr = np.asarray(slots[name], dtype=np.float32).reshape(-1)
            view = self._core.slot(i)
            if arr.shape != view.shape:
                raise ValueError(f"state slot {name!r} has {arr.size} values, this optimizer needs {view.size}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state slot {name!r} contains NaN or Inf")
        # Check the scalars too before touching anything: bad state changes nothing.
        iterations = state["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
        mu_product = _number("nadam_mu_product", state.get("nadam_mu_product", 1.0))
        if not 0.0 < mu_product <= 1.0:
            raise ValueError(f"nadam_mu_product must be in (0, 1], got {mu_product}")
        lr = _number("lr", state["lr"])
        trial = self._core.hyper  # a copy
        trial.lr = lr
        _core.validate_hyper(self._kind, trial)
        for i, name in enumerate(names):
            self._core.slot(i)[...] = np.asarray(slots[name], dtype=np.float32).reshape(-1)
        self._core.iterations = int(iterations)
        self._core.nadam_mu_product = mu_product
        self._core.lr = lr

    def get_config(self):
        cfg = dict(self._config)
        cfg.update({k: v for k, v in self._clip.items() if v is not None})
        if isinstance(self._exclude, (list, tuple)):
            cfg["exclude_from_weight_decay"] = list(self._exclude)
        # Built-in schedules are saved as {"class", "config"}; other callables
        # (and predicates for exclude_from_weight_decay) cannot be, and are left out.
        if isinstance(self.schedule, _schedules.Schedule):
            cfg["schedule"] = _schedules.serialize(self.schedule)
        return cfg

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch semantics).

    g ← g + λθ; b ← μb + (1−τ)g (b = g at the first step); g ← g + μb if
    nesterov else b; θ ← θ − ηg. References: Polyak (1964); Sutskever et al.
    (2013) for Nesterov momentum; torch.optim.SGD.
    """

    _kind = _core.OptKind.SGD
    _fields = {"momentum": "momentum", "dampening": "dampening", "nesterov": "nesterov",
               "weight_decay": "weight_decay"}

    def __init__(self, params=None, lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, **kw):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay, **kw)


class Adagrad(Optimizer):
    """AdaGrad (Duchi et al., 2011), torch.optim.Adagrad semantics.

    η_t = η / (1 + (t−1)·lr_decay); s ← s + g²; θ ← θ − η_t·g / (√s + ε).
    """

    _kind = _core.OptKind.Adagrad
    _fields = {"lr_decay": "lr_decay", "weight_decay": "weight_decay",
               "initial_accumulator_value": "initial_accumulator_value", "eps": "eps"}

    def __init__(self, params=None, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, **kw):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps, **kw)


class RMSprop(Optimizer):
    """RMSProp (Hinton, 2012 lecture 6e), torch.optim.RMSprop semantics.

    v ← αv + (1−α)g²; (centered: ḡ ← αḡ + (1−α)g, v̂ = v − ḡ²); with momentum
    b ← μb + g/(√v̂ + ε), θ ← θ − ηb; without, θ ← θ − ηg/(√v̂ + ε).
    nesterov=True (as optax): u = g/(√v̂ + ε), b ← μb + u, θ ← θ − η(u + μb).
    """

    _kind = _core.OptKind.RMSprop
    _fields = {"alpha": "alpha", "eps": "eps", "weight_decay": "weight_decay", "momentum": "momentum",
               "centered": "centered", "nesterov": "nesterov"}

    def __init__(self, params=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, nesterov=False, **kw):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, nesterov=nesterov, **kw)


class Adadelta(Optimizer):
    """AdaDelta (Zeiler, 2012), torch.optim.Adadelta semantics.

    v ← ρv + (1−ρ)g²; Δ = √(u + ε)/√(v + ε)·g; u ← ρu + (1−ρ)Δ²; θ ← θ − ηΔ.
    """

    _kind = _core.OptKind.Adadelta
    _fields = {"rho": "alpha", "eps": "eps", "weight_decay": "weight_decay"}  # OptHyper keeps rho in alpha

    def __init__(self, params=None, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, **kw):
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, **kw)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), torch.optim.Adam semantics.

    m ← β1m + (1−β1)g; v ← β2v + (1−β2)g²; θ ← θ − η·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε).
    amsgrad (Reddi et al., 2018) uses the running maximum of v. weight_decay
    adds λθ to g (L2); see AdamW for decoupled decay.
    """

    _kind = _core.OptKind.Adam
    _fields = {"betas": ("beta1", "beta2"), "eps": "eps", "weight_decay": "weight_decay",
               "amsgrad": "amsgrad"}

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, **kw):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, **kw)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay,
    θ ← θ(1 − ηλ) before the Adam update (torch.optim.AdamW)."""

    _kind = _core.OptKind.AdamW

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, **kw):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, **kw)


class Adamax(Optimizer):
    """AdaMax (Kingma & Ba, 2015, §7): u ← max(β2u, |g| + ε);
    θ ← θ − η/(1−β1ᵗ)·m/u (torch.optim.Adamax)."""

    _kind = _core.OptKind.Adamax
    _fields = {"betas": ("beta1", "beta2"), "eps": "eps", "weight_decay": "weight_decay"}

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **kw):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kw)


class NAdam(Optimizer):
    """NAdam (Dozat, 2016), torch.optim.NAdam semantics:
    μ_t = β1(1 − ½·0.96^(tψ)), with ψ = momentum_decay."""

    _kind = _core.OptKind.NAdam
    _fields = {"betas": ("beta1", "beta2"), "eps": "eps", "weight_decay": "weight_decay",
               "momentum_decay": "momentum_decay"}

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, **kw):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay, **kw)


class Ftrl(Optimizer):
    """FTRL-Proximal (McMahan et al., 2013) with Keras's semantics
    (tf.keras.optimizers.Ftrl): per-coordinate rates n^(−lr_power), L1 gives
    exact zeros, L2 enters the denominator as 2·l2 as in Keras."""

    _kind = _core.OptKind.Ftrl
    _fields = {"learning_rate_power": "learning_rate_power",
               "initial_accumulator_value": "ftrl_initial_accumulator",
               "l1_regularization_strength": "l1", "l2_regularization_strength": "l2",
               "l2_shrinkage_regularization_strength": "l2_shrinkage", "beta": "ftrl_beta"}

    def __init__(self, params=None, lr=1e-3, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, **kw):
        super().__init__(params, lr=lr, learning_rate_power=learning_rate_power,
                         initial_accumulator_value=initial_accumulator_value,
                         l1_regularization_strength=l1_regularization_strength,
                         l2_regularization_strength=l2_regularization_strength,
                         l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength,
                         beta=beta, **kw)


_CLASSES = {c.__name__.lower(): c for c in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, Ftrl)}
_CLASSES["nadam"] = NAdam
_CLASSES["rmsprop"] = RMSprop


def get(name, **kw):
    """An optimizer by name ('adam', 'sgd', ...), without parameters (for compile)."""
    if isinstance(name, Optimizer):
        return name
    key = resolve("optimizer", name, _CLASSES)
    return _CLASSES[key](**kw)


def by_class_name(name):
    for cls in _CLASSES.values():
        if cls.__name__ == name:
            return cls
    raise ValueError(f"unknown optimizer class {name!r}")


def _slices(params):
    if isinstance(params, Parameter):
        params = [params]
    params = list(params)
    for p in params:
        if not isinstance(p, Parameter):
            raise ValueError(f"expected nv.Parameter objects, got {type(p).__name__}")
    return [p._slice() for p in params]


def clip_grad_value_(params, clip_value):
    """Clamps every gradient element to [−clip_value, clip_value] in place."""
    _core.clip_grad_value(_slices(params), _number("clip_value", clip_value))


def clip_grad_norm_(params, max_norm):
    """Scales the gradients in place so that their global L2 norm is at most
    max_norm (torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
    return float(_core.clip_grad_norm(_slices(params), _number("max_norm", max_norm)))
