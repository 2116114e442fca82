"""The oversubscription guard (nv.set_adaptive_threads; parallel.hpp): when a
worker thread is off the CPU as a parallel loop starts, the loops run on the
calling thread alone for a back-off period, then the team is tried again.
A worker held off its core is simulated with the test hook
_core._set_worker_delay_ns (workers sleep, or below 1 ms spin, as each region starts), so these
tests check the guard's decisions, not timings of the machine."""
import os
import threading
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
    # The run delay reads a constant: the tests here judge the waits at the
    # barrier, and a loaded host's real run delay must not decide them.
    _core._set_fake_run_delay_ns(0)
    _core._reset_thread_guard()
    yield
    _core._set_worker_delay_ns(0)
    _core._set_fake_run_delay_ns(-1)
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


def test_short_late_starts_add_up_to_a_stall(guard):
    """Workers late by 0.2 ms at every region (the hook spins that long) on
    the smallest product split over two threads (128 x 64 x 64; the calling
    thread's share takes ~10 µs, ~5x that under ASan): over a 16 ms window
    the team waited far longer than the calling thread worked, so the loops
    go to the calling thread; the products' bits do not change."""
    r = np.random.default_rng(0)
    a = r.standard_normal((128, 64)).astype(np.float32)
    b = r.standard_normal((64, 64)).astype(np.float32)
    ref = np.zeros((128, 64), np.float32)
    # The test needs the calling thread's share (about half of t1) well below
    # the workers' lateness. On a machine whose other processes hold the core
    # (CI once measured 348 µs, ~17x the quiet time) the premise does not hold
    # and the check says so instead of judging the guard on it; the decision
    # itself is covered by the tests on reported timings below.
    nv.set_num_threads(1)
    for _ in range(4):
        t1 = min(_timed(lambda: _core.gemm(a, b, ref, False, False, False)) for _ in range(30))
        if t1 / 2 < 150e-6:
            break
        time.sleep(0.25)
    else:
        pytest.skip(f"machine too loaded for a real-timing check: the product took "
                    f"{t1 * 1e6:.0f} µs on one thread (quiet: ~20 µs)")
    nv.set_num_threads(2)
    _core._reset_thread_guard()
    _core._set_worker_delay_ns(200_000)
    c = np.empty_like(ref)
    start = time.perf_counter()
    for _ in range(1000):
        _core.gemm(a, b, c, False, False, False)
        np.testing.assert_array_equal(c, ref)
        if nv.thread_stats()["slow_windows"]:
            break
    elapsed = time.perf_counter() - start
    s = nv.thread_stats()
    assert s["slow_windows"] >= 1 and s["stalls"] >= s["slow_windows"]
    _core.gemm(a, b, c, False, False, False)
    assert nv.thread_stats()["solo_regions"] > 0
    # One late region does not decide: the first window closed only after
    # 16 ms of regions. (Counted in time, not regions: when other processes
    # load the machine during the test each region takes longer, and a
    # window once filled in 4 regions instead of the quiet ~70.)
    assert elapsed >= 0.016 and s["team_regions"] >= 2


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def note(work_us, wait_us, times, threads=2):
    for _ in range(times):
        _core._guard_note_region(int(work_us * 1000), int(wait_us * 1000), threads)


def test_window_weighs_waits_against_the_other_threads_shares(guard):
    """The cost test on reported timings (no machine timing involved):
    2 threads whose calling thread waits 0.9x its own share (the team is
    still faster than one thread) pass any number of windows; at 1.1x
    (slower than one thread) the first closed window is a stall; with 4
    threads, 2.5x its share is still within (threads - 1) x."""
    note(20, 18, 1)               # the first region at a team size: not judged
    note(20, 18, 2000)            # 76 ms: four windows, all fine
    s = nv.thread_stats()
    assert s["stalls"] == 0 and s["slow_windows"] == 0 and not s["solo_now"]
    _core._reset_thread_guard()
    note(20, 22, 1)               # not judged again (the reset forgot the team size)
    note(20, 22, 380)             # 15.96 ms: the window is not closed yet
    assert nv.thread_stats()["stalls"] == 0
    note(20, 22, 1)               # 16.002 ms: closed, slower than one thread
    s = nv.thread_stats()
    assert s["slow_windows"] == 1 and s["stalls"] == 1 and s["solo_now"]
    _core._reset_thread_guard()
    note(20, 50, 1, threads=4)
    note(20, 50, 500, threads=4)  # 2.5x < 3x: fine
    assert nv.thread_stats()["stalls"] == 0
    note(20, 70, 200, threads=4)  # 3.5x > 3x
    assert nv.thread_stats()["slow_windows"] >= 1


def test_one_late_worker_is_weighed_against_the_time_the_team_saved(guard):
    """A worker 3 ms late (a hypervisor pause, a daemon waking) among regions
    that ran well is no stall: over the 16 ms window the calling thread
    waited less than its own shares (one thread would have taken longer).
    Only when the waits exceed the shares, as when the worker is late at
    every region, do the loops go to the calling thread."""
    note(1000, 50, 1)             # first region at a team size
    note(1000, 50, 6)             # 6.3 ms of clean regions
    note(1000, 3000, 1)           # one worker 3 ms late
    note(1000, 50, 6)             # 16.6 ms: closed; waits 3.55 ms < shares 12 ms
    assert nv.thread_stats()["stalls"] == 0
    note(100, 5, 20)              # short regions, 2.1 ms
    note(100, 3000, 2)            # two late workers
    note(100, 5, 74)              # 16.07 ms: closed; waits 6.47 ms < shares 9.6 ms
    assert nv.thread_stats()["stalls"] == 0
    note(100, 3000, 4)            # four: 12.4 ms of waits
    note(100, 5, 35)              # 16.08 ms: closed; waits 12.2 ms > shares 3.9 ms
    s = nv.thread_stats()
    assert s["stalls"] == 1 and s["slow_windows"] == 1 and s["solo_now"]


def test_first_region_after_solo_or_new_team_size_is_not_judged(guard):
    """Waking sleeping workers takes over a millisecond on a quiet VM: the
    probe after a back-off and the first region at a new team size are not
    judged, so a late wake-up alone never sends the loops back to one thread;
    the region after them is."""
    note(20, 20000, 1)            # first region at 2 threads: not judged
    assert nv.thread_stats()["stalls"] == 0
    note(20, 20000, 1)            # judged: a 20 ms wait for 20 µs of work
    s = nv.thread_stats()
    assert s["stalls"] == 1 and s["solo_now"]
    note(20, 20000, 1)            # the probe ends the back-off, not judged
    s = nv.thread_stats()
    assert s["stalls"] == 1 and not s["solo_now"]
    note(20, 20000, 1, threads=3)  # a new team size: not judged
    assert nv.thread_stats()["stalls"] == 1
    note(20, 20000, 1, threads=3)
    assert nv.thread_stats()["stalls"] == 2


def test_a_calling_thread_kept_waiting_for_a_cpu_is_a_stall(guard):
    """The run-delay test on a reported run delay (_set_fake_run_delay_ns):
    regions that ran well (no wait at the barrier) while the calling thread
    itself waited for a CPU most of the time send the loops to it alone; a
    delay below 0.3 ms does not; the window closes after 8 ms of regions."""
    note(1000, 0, 1)              # first region: not judged, opens the windows
    _core._set_fake_run_delay_ns(200_000)
    note(1000, 0, 8)              # 8 ms of regions, 0.2 ms of run delay
    s = nv.thread_stats()
    assert s["stalls"] == 0 and s["preempted_windows"] == 0
    _core._set_fake_run_delay_ns(10**9)  # a second waiting, within µs of wall time
    note(1000, 0, 7)              # 7 ms: the window is not closed yet
    assert nv.thread_stats()["stalls"] == 0
    note(1000, 0, 1)
    s = nv.thread_stats()
    assert s["preempted_windows"] == 1 and s["stalls"] == 1 and s["solo_now"]
    assert s["slow_windows"] == 0


def test_run_delay_is_judged_on_the_thread_that_read_it(guard):
    """A run delay is per thread: a window opened on one thread and closed
    by regions of another is not judged (the two readings do not compare)."""
    note(1000, 0, 1)              # opens the windows on this thread
    _core._set_fake_run_delay_ns(10**9)
    t = threading.Thread(target=note, args=(1000, 0, 8))
    t.start()
    t.join()
    s = nv.thread_stats()
    assert s["stalls"] == 0 and s["preempted_windows"] == 0
    note(1000, 0, 8)              # the other thread opened this one
    assert nv.thread_stats()["stalls"] == 0


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"),
                    reason="the kernel reports no run delay here (nerve reads -1 and skips the test)")
def test_run_delay_reads_this_threads_schedstat():
    """_core._run_delay_ns is the calling thread's schedstat run delay: it
    lies between two readings of the file by Python on the same thread."""
    def read():
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    for _ in range(3):
        before = read()
        got = _core._run_delay_ns()
        after = read()
        assert before <= got <= after
    # Another thread reads its own.
    out = {}
    t = threading.Thread(target=lambda: out.update(nerve=_core._run_delay_ns(), py=read()))
    t.start()
    t.join()
    assert 0 <= out["nerve"] <= out["py"]


def test_guard_hook_checks_its_arguments():
    with pytest.raises(ValueError, match="bad timing"):
        _core._guard_note_region(-1, 0, 2)
