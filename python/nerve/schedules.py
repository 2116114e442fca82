"""Learning-rate schedules: functions of the optimizer step t (counted from 0).

Attach one to any optimizer with ``schedule=``; before every step the
optimizer sets ``lr = schedule(t)`` where t is the number of steps already
taken (``opt.iterations``), so the first step uses ``schedule(0)``::

    sched = nv.schedules.ExponentialDecay(initial=0.1, decay_steps=1000, decay_rate=0.1)
    opt = nv.optimizers.SGD(model.parameters(), momentum=0.9, schedule=sched)

Each schedule is a small immutable object with ``get_config()``; saved models
store ``{"class": name, "config": {...}}`` and load it back through a fixed
registry (:func:`deserialize`), so a model file never names code to run.
Arbitrary callables work as schedules too but are not saved.

References: Géron, *Hands-On Machine Learning*, ch. 11 (power, exponential,
piecewise constant and performance scheduling); Loshchilov & Hutter (2017),
SGDR, for cosine decay; Goyal et al. (2017) for linear warm-up.
"""
import math
import numbers

__all__ = ["Schedule", "PiecewiseConstant", "ExponentialDecay", "PowerDecay", "CosineDecay",
           "serialize", "deserialize"]


def _real(name, value, *, low=None, low_open=False, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _count(name, value, *, low=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _step(t):
    # Steps are counts; accept numpy integers and integral floats.
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(float(t)) or t < 0:
        raise ValueError(f"schedule step must be a number >= 0, got {t!r}")
    return float(t)


class Schedule:
    """Base class: ``schedule(t) -> float`` for t = 0, 1, 2, ..."""

    def __call__(self, t):
        return float(self._value(_step(t)))

    def _value(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError  # pragma: no cover

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class PiecewiseConstant(Schedule):
    """``values[0]`` while t <= boundaries[0], ``values[i]`` while
    boundaries[i-1] < t <= boundaries[i], ``values[-1]`` after the last
    boundary (Keras's PiecewiseConstantDecay convention: a boundary step still
    uses the value before it).

    boundaries: strictly increasing step counts >= 0; values: one more than
    boundaries, each >= 0.
    """

    def __init__(self, boundaries, values):
        try:
            boundaries = list(boundaries)
            values = list(values)
        except TypeError:
            raise ValueError("boundaries and values must be sequences") from None
        boundaries = [_count(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        values = [_real(f"values[{i}]", v, low=0.0) for i, v in enumerate(values)]
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have len(boundaries) + 1 = {len(boundaries) + 1} entries, "
                             f"got {len(values)}")
        for i in range(1, len(boundaries)):
            if boundaries[i] <= boundaries[i - 1]:
                raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
        self.boundaries = tuple(boundaries)
        self.values = tuple(values)

    def _value(self, t):
        for b, v in zip(self.boundaries, self.values):
            if t <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


class ExponentialDecay(Schedule):
    """η(t) = initial · decay_rate^(t / decay_steps); with staircase=True the
    exponent is floor(t / decay_steps). decay_rate=0.1 gives the playbook's
    η0·10^(−t/r). initial >= 0, decay_steps > 0, decay_rate > 0."""

    def __init__(self, initial, decay_steps, decay_rate, staircase=False):
        self.initial = _real("initial", initial, low=0.0)
        self.decay_steps = _real("decay_steps", decay_steps, low=0.0, low_open=True)
        self.decay_rate = _real("decay_rate", decay_rate, low=0.0, low_open=True)
        if not isinstance(staircase, bool):
            raise ValueError(f"staircase must be True or False, got {staircase!r}")
        self.staircase = staircase

    def _value(self, t):
        e = t / self.decay_steps
        if self.staircase:
            e = math.floor(e)
        return self.initial * self.decay_rate ** e

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}


class PowerDecay(Schedule):
    """η(t) = initial · (1 + t / decay_steps)^(−power) (power scheduling;
    power=1 halves the rate after decay_steps, thirds it after 2·decay_steps).
    initial >= 0, decay_steps > 0, power >= 0."""

    def __init__(self, initial, decay_steps, power=1.0):
        self.initial = _real("initial", initial, low=0.0)
        self.decay_steps = _real("decay_steps", decay_steps, low=0.0, low_open=True)
        self.power = _real("power", power, low=0.0)

    def _value(self, t):
        return self.initial * (1.0 + t / self.decay_steps) ** (-self.power)

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "power": self.power}


class CosineDecay(Schedule):
    """Linear warm-up then cosine decay (SGDR without restarts):

    - t < warmup_steps: η = initial · t / warmup_steps (0 at t = 0);
    - then, with s = min(t − warmup_steps, decay_steps) / decay_steps:
      η = initial · (alpha + (1 − alpha) · ½(1 + cos(π s))),

    so η = initial at t = warmup_steps and initial·alpha from
    t = warmup_steps + decay_steps on. initial >= 0, decay_steps > 0,
    warmup_steps >= 0 (integer), alpha in [0, 1].
    """

    def __init__(self, initial, decay_steps, warmup_steps=0, alpha=0.0):
        self.initial = _real("initial", initial, low=0.0)
        self.decay_steps = _real("decay_steps", decay_steps, low=0.0, low_open=True)
        self.warmup_steps = _count("warmup_steps", warmup_steps)
        self.alpha = _real("alpha", alpha, low=0.0, high=1.0)

    def _value(self, t):
        if t < self.warmup_steps:
            return self.initial * t / self.warmup_steps
        s = min(t - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.initial * (self.alpha + (1.0 - self.alpha) * 0.5 * (1.0 + math.cos(math.pi * s)))

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "warmup_steps": self.warmup_steps,
                "alpha": self.alpha}


_REGISTRY = {c.__name__: c for c in (PiecewiseConstant, ExponentialDecay, PowerDecay, CosineDecay)}


def serialize(schedule):
    """``{"class": name, "config": {...}}`` for a built-in schedule (JSON-safe)."""
    if not isinstance(schedule, Schedule) or type(schedule).__name__ not in _REGISTRY:
        raise ValueError(f"only nv.schedules classes can be saved, got {type(schedule).__name__}")
    return {"class": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(data):
    """The schedule described by ``serialize``'s output; only the classes of
    this module are accepted."""
    if not isinstance(data, dict) or set(data) != {"class", "config"}:
        raise ValueError(f"a saved schedule is {{'class': ..., 'config': {{...}}}}, got {data!r}")
    cls = _REGISTRY.get(data["class"])
    if cls is None:
        raise ValueError(f"unknown schedule class {data['class']!r}; expected one of {sorted(_REGISTRY)}")
    if not isinstance(data["config"], dict):
        raise ValueError("schedule config must be a mapping")
    try:
        return cls.from_config(dict(data["config"]))
    except TypeError as e:  # unexpected or missing keyword
        raise ValueError(f"bad {data['class']} config: {e}") from None
