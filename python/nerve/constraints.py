"""Weight constraints applied after every update."""
import math


class MaxNorm:
    """Max-norm (Srebro et al., 2005; Hinton et al., 2012): rescales each
    output unit's incoming weight vector (axis=0: each column of the
    (in, out) kernel) whose L2 norm exceeds max_value, to w·max/(1e-7 + ‖w‖) as Keras."""

    def __init__(self, max_value=2.0, axis=0):
        if isinstance(max_value, bool) or not isinstance(max_value, (int, float)) or not math.isfinite(max_value) or max_value <= 0:
            raise ValueError(f"max_value must be a finite number > 0, got {max_value!r}")
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (per output unit) or 1, got {axis!r}")
        self.max_value, self.axis = float(max_value), int(axis)

    def get_config(self):
        return {"name": "MaxNorm", "max_value": self.max_value, "axis": self.axis}

    def __repr__(self):
        return f"MaxNorm(max_value={self.max_value}, axis={self.axis})"


def get(spec):
    if spec is None or isinstance(spec, MaxNorm):
        return spec
    if isinstance(spec, dict) and spec.get("name") == "MaxNorm":
        cfg = dict(spec)
        cfg.pop("name")
        return MaxNorm(**cfg)
    raise ValueError(f"expected an nv.constraints object, got {spec!r}")
