"""The oversubscription guard (nv.set_adaptive_threads; parallel.hpp): when a
worker thread is off the CPU as a parallel loop starts, the loops run on the
calling thread alone for a back-off period, then the team is tried again.
A worker held off its core is simulated with the test hook
_core._set_worker_delay_ns (workers sleep as each region starts), so these
tests check the guard's decisions, not timings of the machine."""
import time

import numpy as np
import pytest

import nerve as nv
from nerve import _core

# How long the hook holds the workers at each region: far above the 0.3 ms
# stall threshold and above twice the calling thread's share of any region
# here, even in a sanitizer build (-O1 + ASan runs the shares ~5x slower).
HELD = 50_000_000


@pytest.fixture
def guard():
    threads = nv.get_num_threads()
    was_on = nv.get_adaptive_threads()
    nv.set_num_threads(2)
    nv.set_adaptive_threads(True)
    _core._set_worker_delay_ns(0)
    _core._reset_thread_guard()
    yield
    _core._set_worker_delay_ns(0)
    _core._reset_thread_guard()
    nv.set_adaptive_threads(was_on)
    nv.set_num_threads(threads)


def mlp():
    nv.manual_seed(3)
    m = nv.Sequential([nv.layers.Dense(256, activation="relu"), nv.layers.Dense(10)], input_dim=256)
    m.compile(optimizer="adam", loss="cross_entropy")
    return m


def batch(rows=512, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((rows, 256)).astype(np.float32), r.integers(0, 10, rows)


def test_no_stall_keeps_the_team(guard):
    m = mlp()
    x, y = batch()
    for _ in range(3):
        m.train_step(x, y)
    s = nv.thread_stats()
    # A 512-row step of this model has several loops above the parallel
    # threshold: they ran on the team.
    assert s["team_regions"] > 0 and s["enabled"]
    # (A real neighbour may stall a region while the suite runs on a busy
    # machine: then, and only then, the loops are running alone.)
    assert not s["solo_now"] or s["stalls"] > 0


def test_a_held_worker_sends_the_loops_to_the_calling_thread_and_bits_do_not_change(guard):
    x, y = batch()
    ref = mlp()
    nv.set_adaptive_threads(False)
    for _ in range(4):
        ref.train_step(x, y)
    nv.set_adaptive_threads(True)
    _core._reset_thread_guard()

    m = mlp()
    _core._set_worker_delay_ns(HELD)
    for _ in range(4):
        m.train_step(x, y)
    s = nv.thread_stats()
    assert s["stalls"] >= 1
    assert s["solo_regions"] > 0
    # The first stalled region ends the team's use for the back-off period:
    # far fewer team regions than the step count would otherwise give.
    assert s["team_regions"] < s["solo_regions"]
    for a, b in zip(ref.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_team_comes_back_after_the_back_off_when_the_worker_is_back(guard):
    m = mlp()
    x, y = batch()
    _core._set_worker_delay_ns(HELD)
    m.train_step(x, y)
    assert nv.thread_stats()["stalls"] >= 1
    _core._set_worker_delay_ns(0)
    time.sleep(nv.thread_stats()["backoff_ms"] / 1e3 + 0.01)
    before = nv.thread_stats()
    m.train_step(x, y)
    m.train_step(x, y)
    s = nv.thread_stats()
    assert s["team_regions"] > before["team_regions"]  # the probe ran on the team
    if s["stalls"] == before["stalls"]:  # no real neighbour meanwhile
        assert not s["solo_now"]
        assert s["team_regions"] > before["team_regions"] + 1


def test_repeated_stalls_lengthen_the_back_off_up_to_one_second(guard):
    m = mlp()
    x, y = batch()
    _core._set_worker_delay_ns(HELD)
    backoffs = []
    for _ in range(3):
        m.train_step(x, y)
        backoffs.append(nv.thread_stats()["backoff_ms"])
        time.sleep(backoffs[-1] / 1e3 + 0.005)  # let the probe come
    assert backoffs[0] >= 20.0
    assert backoffs[1] > backoffs[0] and backoffs[2] > backoffs[1]
    assert max(backoffs) <= 1000.0


def test_guard_off_always_uses_the_team(guard):
    nv.set_adaptive_threads(False)
    m = mlp()
    x, y = batch()
    _core._set_worker_delay_ns(1_000_000)
    for _ in range(2):
        m.train_step(x, y)
    s = nv.thread_stats()
    assert not s["enabled"] and s["solo_regions"] == 0 and s["team_regions"] > 0
    assert nv.build_info()["adaptive_threads"] is False


def test_set_adaptive_threads_checks_its_argument():
    with pytest.raises(TypeError, match="bool"):
        nv.set_adaptive_threads(1)
