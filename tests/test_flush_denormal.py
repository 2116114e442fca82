"""nv.set_flush_denormal: opt-in flush-to-zero on every thread nerve's loops
run on (torch.set_flush_denormal semantics), off by default."""
import numpy as np
import pytest

import nerve as nv

TINY = np.float32(1e-30)  # TINY * 1e-10 = 1e-40 is subnormal in float32


@pytest.fixture
def restore():
    threads = nv.get_num_threads()
    yield
    nv.set_flush_denormal(False)
    nv.set_num_threads(threads)


def dense_output(rows):
    # A product big enough to split over threads (rows x 64 x 256), whose
    # every output is x * w * 256 = 1e-30 * 1e-10 / 256 * 256: subnormal.
    m = nv.Sequential([nv.layers.Dense(256, use_bias=False)], input_dim=64)
    m.layers[0].kernel.value[...] = np.float32(1e-10 / 64)
    return m.predict(np.full((rows, 64), TINY, np.float32))


@pytest.mark.parametrize("threads", [1, 2])
def test_subnormal_results_flush_to_zero_only_when_asked(threads, restore):
    nv.set_num_threads(threads)
    assert not nv.get_flush_denormal()
    kept = dense_output(512)
    assert np.all(kept > 0) and np.all(kept < np.finfo(np.float32).tiny)  # subnormal, not flushed
    assert nv.set_flush_denormal(True) is True
    assert nv.get_flush_denormal()
    np.testing.assert_array_equal(dense_output(512), 0.0)
    assert nv.set_flush_denormal(False) is True
    np.testing.assert_array_equal(dense_output(512), kept)


def test_subnormal_inputs_read_as_zero_in_the_optimizer(restore):
    # SGD, p -= lr g with g = 1e-40 (subnormal) and lr = 1e10: lr g = 1e-30 is
    # normal, so only reading g as 0 (DAZ) leaves p where it was.
    for flush in (False, True):
        nv.set_flush_denormal(flush)
        p = nv.Parameter(np.full(1000, 1e-30, np.float32))
        p.grad[...] = np.float32(1e-40)
        nv.optimizers.SGD([p], lr=1e10).step()
        if flush:
            np.testing.assert_array_equal(p.value, np.float32(1e-30))
        else:
            np.testing.assert_allclose(p.value, np.float32(1e-30) - np.float32(1e10) * np.float64(np.float32(1e-40)),
                                       atol=1e-36)
            assert np.all(p.value < np.float32(1e-31))


def test_fused_training_step_flushes_on_two_threads(restore):
    # Where nothing subnormal arises the mode changes no result: the same
    # training on 2 threads ends with the same bits with and without it.
    nv.set_num_threads(2)
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 20)).astype(np.float32)
    y = r.integers(0, 3, 64)
    weights = []
    for flush in (False, True):
        nv.set_flush_denormal(flush)
        nv.manual_seed(1)
        m = nv.Sequential([nv.layers.Dense(32, activation="relu"), nv.layers.Dense(3)], input_dim=20)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
        for s in range(5):
            m.train_step(x, y)
        weights.append(m.layers[0].kernel.value.copy())
    np.testing.assert_array_equal(weights[0], weights[1])


def test_rejects_non_bool(restore):
    with pytest.raises(TypeError, match="expects a bool"):
        nv.set_flush_denormal(1)
