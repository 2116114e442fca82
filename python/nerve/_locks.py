"""Per-model locks: one model (its layers, its optimizer) used from several
Python threads is serialised.

nerve releases the GIL inside every C++ call, and a model's network keeps
planned buffers (activations, gradients, workspaces) that each call reuses;
two threads in one model at once would resize or overwrite them under each
other (crashes and wrong numbers). Every public call that touches a model's
C++ state (train_step, fit, predict, evaluate, forward, backward, save,
get/set_weights, the optimizer's step, ...) runs under the model's lock, so
concurrent calls on one model run one after another, each with the result it
would have alone. Different models have different locks and run in parallel.

A layer shared by several models (transfer learning) carries its lock into
each of them: such models serialise with each other too. The locks are
reentrant (a callback inside fit may call model.predict), and a model takes
its locks in a fixed order (by id), so models sharing layers cannot deadlock.
"""
import functools
import threading


class ModelLock:
    """The reentrant locks guarding one model's C++ state, taken in id order."""

    __slots__ = ("_locks",)

    def __init__(self):
        self._locks = (threading.RLock(),)

    def merge(self, other):
        """Also guard with `other`'s locks (a layer shared with another model)."""
        if other is self:
            return
        locks = {id(l): l for l in self._locks + other._locks}
        self._locks = tuple(locks[k] for k in sorted(locks))

    def __enter__(self):
        for lock in self._locks:
            lock.acquire()
        return self

    def __exit__(self, *exc):
        for lock in reversed(self._locks):
            lock.release()
        return False


def locked(method):
    """Runs the method under ``self._lock`` (a ModelLock)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


def leaf_layers(layer):
    """`layer` and, recursively, the layers inside it (a Residual's body)."""
    out = [layer]
    for inner in getattr(layer, "layers", None) or []:
        out += leaf_layers(inner)
    return out
