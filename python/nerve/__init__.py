"""nerve: fast feed-forward neural network training on the CPU.

The hot paths (dense layers, activations, losses, optimizer updates and the
whole training step) are C++ kernels in ``nerve._core``; this package is the
thin Python layer for models, initialization and training.
"""
import os

from ._version import __version__

from . import _loader

# The kernels of the best CPU level this machine runs (or NERVE_CPU's), as
# nerve._core: see _loader.py and docs/design.md, "CPU levels".
_cpu_level, _core = _loader.load()
# Adam's decaying-lanes path (docs/design.md, "Adam's decaying lanes"): the
# C++ side reads the variable at the first Adam step; a typo fails here, as
# NERVE_CPU's does, instead of quietly meaning "auto".
if os.environ.get("NERVE_ADAM_DECAYING_LANES", "auto") not in ("", "auto", "on", "off"):
    raise ImportError(f"NERVE_ADAM_DECAYING_LANES={os.environ['NERVE_ADAM_DECAYING_LANES']!r} "
                      "is not one of auto, on, off")
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
    metrics,
    optimizers,
    regularizers,
    schedules,
    surfaces,
)
from . import pruning  # noqa: E402  (after model: it works on Sequential models)
from . import interop, onnx, safetensors  # noqa: E402  (import torch / onnx only when used)
from .model import Sequential, History, ModelFileError, load_model  # noqa: E402
from .optimizers import clip_grad_norm_, clip_grad_value_  # noqa: E402


def set_num_threads(n: int) -> None:
    """Sets the threads nerve's kernels use (also settable with OMP_NUM_THREADS).

    Results do not depend on the thread count: work is split along boundaries
    that depend only on tensor shapes.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    if _fork_state["child"] and n > 1:
        raise RuntimeError("nerve runs single-threaded in a process made by os.fork (multiprocessing's 'fork' "
                           "start method): libgomp's thread pool does not survive fork and a parallel region "
                           "would hang. Use the 'spawn' or 'forkserver' start method for multi-threaded workers.")
    _core.set_num_threads(n)


# Fork safety. libgomp (GCC's OpenMP) keeps a pool of worker threads that a
# forked child does not inherit, yet the child's libgomp believes the pool
# exists: the first parallel region in the child waits forever. A child made
# by fork therefore runs nerve on one thread (parallel_for never enters an
# OpenMP region then), which gives the same bits as any thread count.
_fork_state = {"child": False}


def _after_fork_in_child():
    _fork_state["child"] = True
    _core.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_flush_denormal(mode: bool) -> bool:
    """Flush-to-zero for nerve's float arithmetic, off by default (as
    ``torch.set_flush_denormal``): with it on, subnormal numbers (|x| < 2^-126
    ~ 1.2e-38) read as 0 and subnormal results become 0.

    Why: the FPU takes a slow path on subnormals. Adam squares the gradient, so
    gradients below ~1e-18 (a model that fits its data exactly) make
    subnormal intermediates: on Zen 4 Adam's update became 2.4x slower and a
    batch-1 step 2x; on an Intel Xeon the update 9.9x (bench/README.md).
    A weight whose gradient is 0 (a dead ReLU unit at batch 1) has its first
    moment decay by beta1 a step through the subnormal range; Adam's kernel
    makes those lanes in double without the slow path and without this
    mode (the same bits). JAX (XLA's CPU backend) always computes flushed.
    The cost: values below 2^-126 are lost (float32 keeps 23 bits only above it).

    The mode is a per-thread CPU setting (x86 MXCSR FTZ/DAZ, AArch64 FPCR.FZ):
    it is set on the calling thread now, so numpy in this thread flushes too,
    and on every thread of nerve's kernels as each loop starts.
    Returns True when set, False (nothing changed) on a CPU without such a mode.
    """
    if not isinstance(mode, bool):
        raise TypeError(f"set_flush_denormal expects a bool, got {type(mode).__name__}")
    return bool(_core.set_flush_denormal(mode))


def get_flush_denormal() -> bool:
    """Whether set_flush_denormal(True) is in effect."""
    return bool(_core.flush_denormal())


def get_num_threads() -> int:
    """Threads nerve's kernels use."""
    return _core.num_threads()


def set_adaptive_threads(on: bool) -> None:
    """Turns the oversubscription guard on (the default) or off.

    When the cores nerve's threads run on are shared with another busy process,
    a worker thread is often off the CPU as a parallel loop starts, and the
    loop waits for the scheduler to give it a time slice: two threads were 2x
    slower than one (bench/busy_neighbour.py). With the guard on, nerve times
    each multi-thread loop. When, over 16 ms of loops, the calling thread
    waited for the others longer than the others' shares would have taken it
    alone (the team was slower than one thread), or, over 8 ms of loops, it
    waited for a CPU itself more than a quarter of the time (Linux reports
    this; a sleeping thread does not count), the loops run on the calling
    thread alone for a while (100 ms, doubling up to 1 s while stalls come back
    soon after the team does, halving after it has run clean for four such
    periods), then the team is tried again.
    Results do not change: the work is split by shape, not by thread count.
    ``NERVE_ADAPTIVE_THREADS=0`` in the environment turns it off at import;
    ``thread_stats()`` shows what it did.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_adaptive_threads expects a bool, got {type(on).__name__}")
    _core.set_adaptive_threads(on)


def get_adaptive_threads() -> bool:
    """Whether the oversubscription guard (set_adaptive_threads) is on."""
    return bool(_core.adaptive_threads())


def thread_stats() -> dict:
    """What the oversubscription guard saw since import: ``team_regions``
    (loops run by the thread team), ``solo_regions`` (loops run on the calling
    thread alone because of a recent stall), ``stalls`` (of which
    ``slow_windows`` were found by the waits: over a 16 ms window the team
    took longer than one thread would have; and ``preempted_windows`` by the
    calling thread's own wait for a CPU over an 8 ms window), ``solo_now``
    and the current ``backoff_ms``, plus ``enabled``."""
    return dict(_core.thread_guard_stats())


def build_info() -> dict:
    """Version, compiler, SIMD level in use, OpenMP and threads of this build.

    ``cpu_level``: the kernels in use ("generic", "avx2" or "avx512");
    ``cpu_levels``: the levels this install has that this CPU runs, best last
    (``NERVE_CPU`` picks a lower one at import). ``adam_decaying_lanes``:
    whether Adam's vector kernels make the moments decaying through the
    subnormal range in double (the same bits, faster where the CPU's
    subnormal arithmetic is slow; timed once per process, or
    ``NERVE_ADAM_DECAYING_LANES=on|off``).
    """
    info = dict(_core.build_info())
    info["version"] = __version__
    info["cpu_level"] = _cpu_level
    info["cpu_levels"] = _loader.cpu_levels()
    info["adaptive_threads"] = bool(_core.adaptive_threads())
    info["adam_decaying_lanes"] = bool(_core.adam_decaying_lanes()["in_use"])
    return info


__all__ = [
    "__version__",
    "Parameter",
    "Sequential",
    "History",
    "load_model",
    "ModelFileError",
    "manual_seed",
    "set_num_threads",
    "get_num_threads",
    "set_flush_denormal",
    "get_flush_denormal",
    "set_adaptive_threads",
    "get_adaptive_threads",
    "thread_stats",
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
    "metrics",
    "optimizers",
    "pruning",
    "interop",
    "onnx",
    "safetensors",
    "regularizers",
    "schedules",
    "surfaces",
]
