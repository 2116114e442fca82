"""nv.set_flush_denormal: opt-in flush-to-zero on every thread nerve's loops
run on (torch.set_flush_denormal semantics), off by default."""
import os
import subprocess
import sys

import numpy as np
import pytest

import nerve as nv
from nerve import _core

GENERIC = nv.build_info()["cpu_level"] == "generic"
TINY = np.float32(1e-30)  # TINY * 1e-10 = 1e-40 is subnormal in float32


@pytest.fixture
def restore():
    threads = nv.get_num_threads()
    yield
    nv.set_flush_denormal(False)
    nv.set_num_threads(threads)
    _core.set_adam_decaying_lanes("auto")


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


def _adam_with_state(m0, v0, g, p0, iterations, vmax0=None, **kw):
    """nerve's Adam one step on from the given moments (exp_avg, exp_avg_sq,
    and max_exp_avg_sq with amsgrad)."""
    p = nv.Parameter(p0.copy())
    opt = nv.optimizers.Adam([p], **kw)
    p.grad[...] = 0.0
    opt.step()  # makes the slots
    state = opt.state_dict()
    state["iterations"] = iterations - 1
    state["slots"]["exp_avg"] = m0.copy()  # each slot: one array over all the parameters
    state["slots"]["exp_avg_sq"] = v0.copy()
    if vmax0 is not None:
        state["slots"]["max_exp_avg_sq"] = vmax0.copy()
    opt.load_state_dict(state)
    p.value[...] = p0
    p.grad[...] = g
    opt.step()
    out = opt.state_dict()["slots"]
    return p.value.copy(), out["exp_avg"], out["exp_avg_sq"]


def _decaying_moments(n, seed):
    # Lanes of five kinds, mixed within every vector: (0) no gradient and a
    # subnormal first moment, (1) no gradient and a first moment between
    # 2^-126 and 2^-100 (its step, lr * m, is subnormal below about 2^-116),
    # (2) no gradient and an ordinary moment, (3) a gradient and zero
    # moments, (4) no gradient and m = 0.
    r = np.random.default_rng(seed)
    kind = r.integers(0, 5, n)
    sign = np.where(r.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    subnormal = r.integers(1, 1 << 23, n, dtype=np.uint32).view(np.float32)
    small = np.exp2(r.uniform(-126, -100, n)).astype(np.float32)
    ordinary = r.uniform(1e-4, 1e-2, n).astype(np.float32)
    m0 = sign * np.select([kind == 0, kind == 1, kind == 2], [subnormal, small, ordinary], 0.0).astype(np.float32)
    v0 = np.where(kind == 3, 0.0, r.uniform(1e-8, 1e-4, n)).astype(np.float32)
    g = np.where(kind == 3, r.uniform(-1e-2, 1e-2, n), 0.0).astype(np.float32)
    # Weights of the size of their steps in half the decaying lanes, so that
    # p - step shows the step's last bit (next to 0.5 it would vanish).
    p0 = np.where((kind <= 1) & (r.random(n) < 0.5), r.uniform(-1e-35, 1e-35, n), r.uniform(-0.5, 0.5, n))
    return m0, v0, g, p0.astype(np.float32)


@pytest.mark.levels
@pytest.mark.parametrize("threads,amsgrad", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize("lanes", ["on", "off"])
def test_adam_decaying_moments_against_ieee_float32(threads, amsgrad, flush, lanes, restore):
    # Adam's moments of weights without gradient decay by beta1 a step
    # through the subnormal range, where the vector kernels take another
    # path (cpp/src/optim/adam.cpp, decaying lanes); the oracle is the same
    # sequence of IEEE float32 operations in numpy (with eps = 0 each of
    # Adam's fused multiply-adds is one product: exact in float32 here),
    # subnormals kept, or flushed in this thread when nerve flushes. Both
    # paths, whichever this CPU's probe picks: the bits must not tell.
    _core.set_adam_decaying_lanes(lanes)
    assert _core.adam_decaying_lanes()["in_use"] == (lanes == "on" and not GENERIC)
    nv.set_num_threads(threads)
    nv.set_flush_denormal(flush)
    n, t, lr, b1, b2 = 8192 + 5, 50, 1e-3, 0.9, 0.999
    m0, v0, g, p0 = _decaying_moments(n, seed=threads)
    # amsgrad: a running maximum above the new v wherever v0 > 0 (no gradient).
    vmax0 = (v0 * np.float32(1.5)).astype(np.float32) if amsgrad else None
    got_p, got_m, got_v = _adam_with_state(m0, v0, g, p0, t, vmax0=vmax0, lr=lr, eps=0.0, amsgrad=amsgrad)
    f = np.float32
    step_size, inv_sqrt_bc2 = f(lr / (1.0 - b1 ** t)), f(1.0 / np.sqrt(1.0 - b2 ** t))
    # fma(b1, m0, (1 - b1) g) with one of its terms 0 in every lane: one
    # product rounded once, plus +0 only where the product is exactly 0
    # (-0 + +0 = +0): a flushed result keeps its sign, a flushed input
    # (m0 == 0 reads a subnormal as 0 when flushing) gives +0.
    # (The generic level has no FMA: b1 m0 + 0 in two roundings, so a
    # flushed -0 product becomes +0 there.)
    decayed = f(b1) * m0 + f(0.0) if GENERIC else np.where(m0 == 0, f(0.0), f(b1) * m0)
    m = np.where(g != 0, f(1.0 - b1) * g, decayed)
    v = np.where(g == 0, f(b2) * v0, f(1.0 - b2) * g * g)
    v_hat = np.maximum(vmax0, v) if amsgrad else v
    want_p = p0 - step_size * m / (np.sqrt(v_hat) * inv_sqrt_bc2)
    subnormal = (np.abs(m[m != 0]) < np.finfo(np.float32).tiny).sum()
    assert subnormal == 0 if flush else subnormal > n // 10
    for got, want in ((got_m, m), (got_v, v), (got_p, want_p)):
        np.testing.assert_array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))


def test_adam_decaying_lanes_setting(restore):
    # auto: the probe's verdict, from two timings of the same workload;
    # a mode beyond the three is refused and changes nothing.
    info = _core.adam_decaying_lanes()
    assert info["mode"] == "auto"
    if GENERIC:
        assert info == {"mode": "auto", "in_use": False, "probe_plain_s": 0.0, "probe_lanes_s": 0.0}
    else:
        assert 0 < info["probe_plain_s"] < 0.1 and 0 < info["probe_lanes_s"] < 0.1
        assert info["in_use"] == (info["probe_lanes_s"] < 0.9 * info["probe_plain_s"])
    assert nv.build_info()["adam_decaying_lanes"] == info["in_use"]
    _core.set_adam_decaying_lanes("off")
    with pytest.raises(ValueError, match="'auto', 'on' or 'off', got 'fast'"):
        _core.set_adam_decaying_lanes("fast")
    assert _core.adam_decaying_lanes()["mode"] == "off"


@pytest.mark.parametrize("value,mode", [("on", "on"), ("off", "off"), ("", "auto"), ("fast", None)])
def test_adam_decaying_lanes_from_the_environment(value, mode):
    env = dict(os.environ, NERVE_ADAM_DECAYING_LANES=value)
    code = "import nerve; from nerve import _core; print(_core.adam_decaying_lanes()['mode'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if mode is None:
        assert r.returncode != 0 and "NERVE_ADAM_DECAYING_LANES='fast' is not one of auto, on, off" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == mode
