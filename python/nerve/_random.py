"""The global seed: one seed drives initialization, dropout, RReLU, noise and
shuffling. Every random draw in nerve is keyed by (seed, stream, counter)
through the counter-based Philox generator, so a seed gives the same result
for any thread count."""
import os
import threading

_state = {"seed": int.from_bytes(os.urandom(4), "little"), "stream": 0}
_lock = threading.Lock()  # models built in several threads still get distinct streams


def manual_seed(seed: int) -> None:
    """Seeds everything random in nerve (like torch.manual_seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    with _lock:
        _state["seed"] = seed
        _state["stream"] = 0


def next_key():
    """A fresh (seed, stream) pair: consecutive calls give unrelated streams."""
    with _lock:
        _state["stream"] += 1
        return _state["seed"], _state["stream"]


def global_seed() -> int:
    return _state["seed"]
