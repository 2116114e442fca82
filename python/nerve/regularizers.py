"""Weight penalties with Keras's scale: L1 adds l1·Σ|w|, L2 adds l2·Σw² (no ½).

Given as ``kernel_regularizer=`` / ``bias_regularizer=``; the penalty is added
to the reported loss and its gradient (l1·sign(w) + 2·l2·w) to the weights'
gradient inside the fused training step.
"""
import math


class Regularizer:
    def __init__(self, l1=0.0, l2=0.0):
        for name, v in (("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w):
        """The penalty of a weight array (numpy), for inspection and tests."""
        import numpy as np

        w = np.asarray(w, dtype=np.float64)
        return self.l1 * np.abs(w).sum() + self.l2 * np.square(w).sum()

    def get_config(self):
        return {"name": type(self).__name__, "l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(Regularizer):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"name": "L1", "l1": self.l1}


class L2(Regularizer):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"name": "L2", "l2": self.l2}


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        super().__init__(l1=l1, l2=l2)


def get(spec):
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        cls = {"L1": L1, "L2": L2, "L1L2": L1L2, "Regularizer": L1L2}.get(cfg.pop("name", None))
        if cls is None:
            raise ValueError(f"unknown regularizer config {spec!r}")
        return cls(**cfg)
    raise ValueError(f"expected an nv.regularizers object, got {spec!r}")
