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
import inspect
import numbers

import numpy as np

from . import _core
from . import schedules as _schedules
from ._locks import ModelLock, locked
from ._names import check_params, resolve
from .parameter import Parameter


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


_COMMON = ("clipnorm", "clipvalue", "global_clipnorm", "schedule", "exclude_from_weight_decay")
# Keys older files saved for every optimizer: nadam_mu_product was 1.0 for all but NAdam.
_LEGACY_SCALARS = {"nadam_mu_product": 1.0}


class Optimizer:
    """Base class: holds the parameters, the C++ optimizer and the schedule.

    Each subclass is made from one row of the C++ table (``_core.optimizer_table()``):
    its name, hyper-parameters (defaults, ranges), state slots and kernels live in
    one C++ unit (``cpp/src/optim/``)."""

    _row = None          # the table row of this class
    _args = {}           # python argument name -> list of C++ hyper-parameter names (betas: two)

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
        allowed = ["lr", *self._args, *_COMMON]
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
        lr0 = schedule(0) if schedule is not None else lr
        values = {"lr": _number("lr", lr0)}
        for arg, value in hyper.items():
            values.update(self._values(arg, value))
        clip = {}
        for arg, value in self._clip.items():
            if value is not None:
                v = _number(arg, value)
                if v <= 0:
                    raise ValueError(f"{arg} must be > 0, got {v}")
                clip[arg] = v
        self._core = _core.Optimizer(self._row["name"], values, **clip)
        self._model = None  # weak reference to the model compiled with this optimizer
        self._lock = ModelLock()  # the model's lock once compiled (nerve/_locks.py)
        self.params = []
        self._arenas = []
        if params is not None:
            self._attach(params)

    @classmethod
    def _values(cls, arg, value):
        """Python argument -> {C++ hyper-parameter: number} (betas=(b1, b2) gives two)."""
        names = cls._args[arg]
        specs = [cls._specs[n] for n in names]
        if len(names) > 1:
            if not isinstance(value, (tuple, list)) or len(value) != len(names):
                raise ValueError(f"{arg} must be a pair of numbers, got {value!r}")
            return {n: _number(arg, v) for n, v in zip(names, value)}
        if specs[0]["flag"]:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{arg} must be True or False, got {value!r}")
            return {names[0]: float(bool(value))}
        return {names[0]: _number(arg, value)}

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
            slots, iterations, scalars = kept
            for k, view in enumerate(self._slot_views()):
                for p, v in zip(params, view):
                    if id(p) in slots:
                        v[...] = slots[id(p)][k]
            self._core.iterations = iterations
            self._core.scalar_state = scalars

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
        return slots, self._core.iterations, self._core.scalar_state

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

    @locked
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

    @locked
    def zero_grad(self):
        """Zeroes the gradients (of every parameter of the compiled model,
        frozen ones included, so a layer unfrozen later starts clean)."""
        model = self._model() if self._model is not None else None
        for p in (model.parameters() if model is not None else self.params):
            p.grad.fill(0.0)

    @locked
    def state_dict(self):
        """Hyper-parameters, step count, the optimizer's scalars kept between
        steps (NAdam: ``nadam_mu_product``) and state slots (copies)."""
        state = {
            "class": type(self).__name__,
            "config": self.get_config(),
            "lr": self.lr,
            "iterations": int(self._core.iterations),
        }
        for spec, value in zip(self._row["scalars"], self._core.scalar_state):
            state[spec["name"]] = float(value)
        state["slots"] = {name: self._core.slot(i).copy() for i, name in enumerate(self._core.slot_names)}
        return state

    @locked
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
        # At most 2**53: the step count enters the bias corrections as a double
        # (exact up to 2**53), and 2**63 - 1 would overflow the next step's count.
        if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or \
                not 0 <= iterations <= 2 ** 53:
            raise ValueError(f"iterations must be an integer in [0, 2**53], got {iterations!r}")
        scalars = []
        for spec in self._row["scalars"]:
            v = _number(spec["name"], state.get(spec["name"], spec["init"]))
            if not spec["lo"] < v <= spec["hi"]:
                raise ValueError(f"{spec['name']} must be in ({spec['lo']:g}, {spec['hi']:g}], got {v}")
            scalars.append(v)
        own = {s["name"] for s in self._row["scalars"]}
        for key, neutral in _LEGACY_SCALARS.items():
            if key in state and key not in own and _number(key, state[key]) != neutral:
                raise ValueError(f"{key} is not state of {type(self).__name__} (expected {neutral} or nothing, "
                                 f"got {state[key]!r})")
        lr = _number("lr", state["lr"])
        self._core.validate({"lr": lr})
        for i, name in enumerate(names):
            self._core.slot(i)[...] = np.asarray(slots[name], dtype=np.float32).reshape(-1)
        self._core.iterations = int(iterations)
        self._core.scalar_state = scalars
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


def _make_class(row):
    """An Optimizer subclass from one row of the C++ table: the constructor's
    signature (positional order and defaults) is the table's."""
    args = {}      # python argument -> C++ names
    defaults = {}  # python argument -> default
    for spec in row["hyper"]:
        key = spec["group"] or spec["name"]
        if key not in args:
            args[key], defaults[key] = [], []
        args[key].append(spec["name"])
        defaults[key].append(spec["default"])
    defaults = {k: (tuple(v) if len(v) > 1 else v[0]) for k, v in defaults.items()}
    P = inspect.Parameter
    sig = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD, default=None)]
        + [P(a, P.POSITIONAL_OR_KEYWORD, default=d) for a, d in defaults.items()]
        + [P(k, P.KEYWORD_ONLY, default=None) for k in _COMMON])
    own = {k for k in args if k != "lr"}

    def __init__(self, *a, **kw):
        unknown = {k: v for k, v in kw.items() if k not in sig.parameters or k == "self"}
        check_params("optimizer", row["name"], unknown, list(sig.parameters)[2:])
        bound = sig.bind(self, *a, **kw)
        bound.apply_defaults()
        given = dict(bound.arguments)
        given.pop("self")
        params = given.pop("params")
        hyper = {k: (tuple(v) if isinstance(v, list) and len(args.get(k, ())) > 1 else v)
                 for k, v in given.items() if k in own}
        common = {k: given[k] for k in _COMMON}
        Optimizer.__init__(self, params, lr=given["lr"], **common, **hyper)

    __init__.__signature__ = sig
    __init__.__doc__ = row["doc"]
    doc = row["doc"] + "\n\nArguments (defaults): " + ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    cls = type(row["name"], (Optimizer,), {
        "__init__": __init__, "__doc__": doc, "__module__": __name__,
        "_row": row, "_args": {k: v for k, v in args.items() if k != "lr"},
        "_specs": {s["name"]: s for s in row["hyper"]}})
    cls.__signature__ = inspect.Signature(list(sig.parameters.values())[1:])
    return cls


# One class per row of the C++ table, in its order.
_TABLE = _core.optimizer_table()
__all__ = []
for _row in _TABLE:
    globals()[_row["name"]] = _make_class(_row)
    __all__.append(_row["name"])
__all__ += ["Optimizer", "get", "by_class_name", "clip_grad_value_", "clip_grad_norm_", "names"]

_CLASSES = {name.lower(): globals()[name] for name in __all__[:len(_TABLE)]}


def names():
    """The optimizers' class names with their arguments and defaults (from the C++ table)."""
    return [{"name": r["name"], "arguments": {k: v.default for k, v in _CLASSES[r["name"].lower()].__signature__.parameters.items()
                                              if k != "params" and k not in _COMMON}} for r in _TABLE]


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
