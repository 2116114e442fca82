"""Picks the CPU level of nerve's C++ kernels when nerve is imported.

An install carries one extension module per level, ``nerve._core_generic``,
``nerve._core_avx2`` and ``nerve._core_avx512`` (x86-64; other architectures:
generic only), compiled from the same sources with different flags. This
module imports the best one the CPU runs and registers it as ``nerve._core``,
so the rest of the package never knows which it got. ``NERVE_CPU`` in the
environment picks a lower level. ``nerve._cpucheck`` is compiled for the
baseline ISA, so asking it about the CPU can never fault.
"""
import difflib
import importlib
import importlib.util
import os
import sys

from . import _cpucheck

LEVELS = tuple(_cpucheck.all_levels)  # lowest first


def built_levels():
    """The levels this install has (lowest first)."""
    return [lvl for lvl in _cpucheck.built_levels()
            if importlib.util.find_spec(f"{__package__}._core_{lvl}") is not None]


def cpu_levels():
    """The levels this install has that this CPU runs, best last."""
    return [lvl for lvl in built_levels() if not _cpucheck.missing_features(lvl)]


def choose(env=None):
    """The level to load: NERVE_CPU if set (checked), else the best this CPU runs."""
    if env is None:
        env = os.environ.get("NERVE_CPU", "")
    env = env.strip().lower()
    runs = cpu_levels()
    if not env:
        if not runs:  # pragma: no cover - an install always has generic
            raise ImportError(f"nerve: no kernel level of this install runs on this CPU "
                              f"(built: {', '.join(built_levels()) or 'none'})")
        return runs[-1]
    if env not in LEVELS:
        close = difflib.get_close_matches(env, LEVELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ImportError(f"NERVE_CPU={env!r} is not a CPU level (one of {', '.join(LEVELS)}){hint}")
    missing = _cpucheck.missing_features(env)
    if missing:
        raise ImportError(f"NERVE_CPU={env!r}: this CPU lacks {', '.join(missing)} "
                          f"(it runs: {', '.join(runs) or 'none'})")
    if env not in built_levels():
        raise ImportError(f"NERVE_CPU={env!r}: this install was built without that level "
                          f"(it has: {', '.join(built_levels())}; rebuild with "
                          "NERVE_CPU_LEVELS unset to build them all)")
    return env


def load():
    """Imports the chosen level's module and registers it as nerve._core."""
    level = choose()
    module = importlib.import_module(f"{__package__}._core_{level}")
    sys.modules[f"{__package__}._core"] = module
    return level, module
