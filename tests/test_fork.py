"""Fork safety: a child made by os.fork (multiprocessing's 'fork' start
method) can train after the parent trained on several threads; it runs on
one thread, with the same bits (docs/reliability.md, "Fork")."""
import multiprocessing as mp
import os
import sys

import numpy as np
import pytest

import nerve as nv

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                                reason="needs the fork start method")


def _train(seed=0):
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(256, activation="relu"), nv.layers.Dense(10)], input_dim=128)
    m.compile(optimizer="adam", loss="cross_entropy")
    r = np.random.default_rng(seed)
    x = r.standard_normal((512, 128)).astype(np.float32)
    y = r.integers(0, 10, 512)
    for _ in range(3):
        m.train_step(x, y)  # batches of 512: large enough to run in parallel regions
    return np.concatenate([w.ravel() for w in m.get_weights()])


def _child(queue):
    try:
        weights = _train()
        try:
            nv.set_num_threads(2)
            refused = False
        except RuntimeError:
            refused = True
        queue.put((weights, nv.get_num_threads(), refused))
    except BaseException as e:  # report, never hang the parent
        queue.put(repr(e))


def test_child_trains_after_the_parent_used_the_thread_pool():
    saved = nv.get_num_threads()
    try:
        nv.set_num_threads(2)
        want = _train()  # the parent's libgomp pool now exists
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(queue,))
        proc.start()
        try:
            # Before the fix the child hung in libgomp (all_finite <- check_finite <- train_step).
            got = queue.get(timeout=120)
        except Exception:
            got = None
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        assert got is not None, "the forked child hung (or died) training"
        assert not isinstance(got, str), got
        weights, threads, refused = got
        assert threads == 1 and refused
        np.testing.assert_array_equal(weights, want)  # one thread: the same bits
        assert proc.exitcode == 0
        # The parent keeps its threads.
        assert nv.get_num_threads() == 2
    finally:
        nv.set_num_threads(saved)
