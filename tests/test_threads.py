"""One model used from several Python threads is serialised by a per-model
lock (never a crash, never a wrong number); different models run in parallel
(docs/reliability.md, "Threads")."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import nerve as nv


def model(seed=0, opt="adam"):
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(128, activation="relu"), nv.layers.Dropout(0.2),
                       nv.layers.Dense(4)], input_dim=64)
    m.compile(optimizer=opt, loss="cross_entropy")
    return m


def data(n=96, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 64)).astype(np.float32), r.integers(0, 4, n)


def hammer(fn, jobs, workers=8):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs))


def test_concurrent_train_steps_equal_the_same_steps_in_sequence():
    # Identical batches: any order of the steps is the same sequence of
    # updates, so the threads must give the sequential run's bits. (Before the
    # lock: crashes, and weights that differed from the sequential run.)
    x, y = data(200)
    seq, par = model(), model()
    for _ in range(48):
        seq.train_step(x, y)
    losses = hammer(lambda _: par.train_step(x, y), range(48), workers=4)
    assert all(np.isfinite(losses))
    for a, b in zip(seq.get_weights(), par.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert par.optimizer.iterations == 48 and par._net.step == seq._net.step


def test_concurrent_predicts_with_mixed_batch_sizes_are_exact():
    # Before: 386-566 wrong rows of 800-1200 (another thread re-planned the buffers).
    m = model()
    x, _ = data(600)
    sizes = [1, 7, 64, 600, 13, 256, 2, 99]
    want = {b: m.predict(x, batch_size=b) for b in sizes}
    got = hammer(lambda b: (b, m.predict(x, batch_size=b)), sizes * 6)
    for b, out in got:
        np.testing.assert_array_equal(out, want[b])


def test_mixed_calls_on_one_model_never_crash_and_stay_consistent():
    m = model()
    x, y = data(96)

    def job(i):
        kind = i % 4
        if kind == 0:
            return m.train_step(x[: 5 + i % 30], y[: 5 + i % 30])
        if kind == 1:
            return float(m.predict(x, batch_size=1 + i % 50).sum())
        if kind == 2:
            return m.evaluate(x, y)["loss"]
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)
        return 0.0

    out = hammer(job, range(64))
    assert np.all(np.isfinite(out))
    # Every step happened exactly once: 16 train_steps + 16 fits of 6 batches.
    assert m.optimizer.iterations == 16 + 16 * 6
    # And the model still predicts what a fresh copy with its weights predicts.
    twin = nv.Sequential([nv.layers.Dense(128, activation="relu"), nv.layers.Dropout(0.2),
                          nv.layers.Dense(4)], input_dim=64)
    twin.set_weights(m.get_weights())
    np.testing.assert_array_equal(twin.predict(x), m.predict(x))


def test_two_identical_fits_in_threads_equal_two_fits_in_sequence():
    x, y = data(256)
    seq, par = model(), model()
    for _ in range(4):
        seq.fit(x, y, epochs=2, batch_size=8, seed=3, verbose=0)
    hammer(lambda _: par.fit(x, y, epochs=2, batch_size=8, seed=3, verbose=0), range(4), workers=4)
    for a, b in zip(seq.get_weights(), par.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_standalone_optimizer_steps_are_serialised():
    def run(threads):
        p = nv.Parameter(np.zeros(1000))
        opt = nv.optimizers.Adam([p], lr=1e-2)
        p.grad[...] = np.linspace(-1, 1, 1000, dtype=np.float32)
        if threads:
            hammer(lambda _: opt.step(), range(64))
        else:
            for _ in range(64):
                opt.step()
        return p.value.copy(), opt.iterations

    (a, ia), (b, ib) = run(False), run(True)
    assert ia == ib == 64
    np.testing.assert_array_equal(a, b)


def test_different_models_do_not_wait_for_each_other():
    # Holding model a's lock (as a long call on a would) must not block model b.
    a, b = model(0), model(1)
    x, y = data(16)
    done = threading.Event()

    def use_b():
        b.train_step(x, y)
        b.predict(x)
        done.set()

    with a._lock:
        t = threading.Thread(target=use_b)
        t.start()
        assert done.wait(30), "model b waited for model a's lock"
    t.join()


def test_models_sharing_a_layer_share_its_lock():
    base = model()
    shared = base.layers[0]
    other = nv.Sequential([shared, nv.layers.Dense(2)], input_dim=64)
    # The shared layer's buffers are used by both models: they serialise.
    assert set(map(id, base._lock._locks)) <= set(map(id, other._lock._locks))
    blocked = threading.Event()

    def use_other():
        other.predict(np.zeros((2, 64), np.float32))
        blocked.set()

    with base._lock:
        t = threading.Thread(target=use_other)
        t.start()
        assert not blocked.wait(0.3)
    assert blocked.wait(30)
    t.join()
