"""nerve: fast feed-forward neural network training on the CPU.

The hot paths (dense layers, activations, losses, optimizer updates and the
whole training step) are C++ kernels in ``nerve._core``; this package is the
thin Python layer for models, initialization and training.
"""
from ._version import __version__

from . import _cpucheck

_missing = _cpucheck.missing_features()
if _missing:  # pragma: no cover - depends on the CPU
    raise ImportError(
        "nerve's C++ kernels were built for "
        f"{_cpucheck.simd_build!r} and need the CPU features {', '.join(_cpucheck.required_features())}; "
        f"this CPU lacks: {', '.join(_missing)}. Rebuild for this machine with "
        "NERVE_SIMD=generic pip install --no-binary nerve nerve (or NERVE_SIMD=native)."
    )

from . import _core  # noqa: E402
from ._random import manual_seed  # noqa: E402
from .parameter import Parameter  # noqa: E402
from . import (  # noqa: E402
    activations,
    augment,
    callbacks,
    constraints,
    datasets,
    diagnostics,
    initializers,
    layers,
    losses,
    optimizers,
    regularizers,
    schedules,
    surfaces,
)
from . import pruning  # noqa: E402  (after model: it works on Sequential models)
from .model import Sequential, History, load_model  # noqa: E402
from .optimizers import clip_grad_norm_, clip_grad_value_  # noqa: E402


def set_num_threads(n: int) -> None:
    """Sets the threads nerve's kernels use (also settable with OMP_NUM_THREADS).

    Results do not depend on the thread count: work is split along boundaries
    that depend only on tensor shapes.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads nerve's kernels use."""
    return _core.num_threads()


def build_info() -> dict:
    """Version, compiler, SIMD level in use, OpenMP and threads of this build."""
    info = dict(_core.build_info())
    info["version"] = __version__
    info["simd_build"] = _cpucheck.simd_build
    return info


__all__ = [
    "__version__",
    "Parameter",
    "Sequential",
    "History",
    "load_model",
    "manual_seed",
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "clip_grad_norm_",
    "clip_grad_value_",
    "activations",
    "augment",
    "callbacks",
    "constraints",
    "datasets",
    "diagnostics",
    "initializers",
    "layers",
    "losses",
    "optimizers",
    "pruning",
    "regularizers",
    "schedules",
    "surfaces",
]
