"""The GEMM paths behind Dense (cpp/src/gemm.cpp) against numpy, shape by shape.

gemm() picks among Eigen's matrix-vector product (one row or column), a
single-pass rank-K update (depth <= 4: dW at batch 1-4), and the packed GEMM
kernel on output tiles (balanced row tiles, column tiles), in parallel over
tiles (test_gemm_kernel.py tests that kernel's edges directly). Each path is reached here through a Dense layer's forward (Y = X W + b),
backward (dW = X^T dZ accumulated, dX = dZ W^T), and checked against float64
numpy; then the same products on 1 and 2 threads must agree bit for bit.
"""
import numpy as np
import pytest

import nerve as nv
from conftest import core_dense
from nerve import _core


def _run(batch, n_in, units, seed=0):
    layer, arena, w, b = core_dense(_core.make_activation("identity", {}), n_in, units, seed)
    r = np.random.default_rng(seed + 1)
    x = r.standard_normal((batch, n_in)).astype(np.float32)
    dy = r.standard_normal((batch, units)).astype(np.float32)
    y = layer.forward_np(x, True)
    gw = arena.grads(0, n_in * units).reshape(n_in, units)
    gw[...] = 0.25  # backward accumulates: the old value must be kept
    dx = layer.backward_np(x, y, dy, True)
    return x, dy, w.copy(), b.copy(), y, gw.copy(), dx


# (batch, in, out): matrix-vector (batch 1, out 1), rank-1..4 updates, tiny
# products, column tiles (batch 32), uneven and balanced row tiles (300, 784),
# a narrow (logits) output split in two row tiles (512 x 256 x 10), and a
# 128-wide layer cut into four tiles (512 x 128 x 128).
SHAPES = [(1, 784, 512), (1, 7, 1), (2, 33, 9), (3, 5, 17), (4, 300, 40), (5, 3, 4),
          (32, 784, 512), (300, 200, 130), (64, 784, 300), (1030, 24, 16), (512, 256, 10),
          (512, 128, 128)]


@pytest.mark.parametrize("batch,n_in,units", SHAPES)
def test_dense_products_match_numpy(batch, n_in, units):
    x, dy, w, b, y, gw, dx = _run(batch, n_in, units)
    x64, dy64, w64 = x.astype(np.float64), dy.astype(np.float64), w.astype(np.float64)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(n_in, batch, units)))
    np.testing.assert_allclose(y, x64 @ w64 + b, **tol)
    np.testing.assert_allclose(gw, 0.25 + x64.T @ dy64, **tol)
    np.testing.assert_allclose(dx, dy64 @ w64.T, **tol)


@pytest.mark.parametrize("batch,n_in,units", [(1, 784, 512), (3, 300, 200), (32, 784, 512),
                                              (300, 784, 256), (1030, 64, 48), (512, 256, 10),
                                              (512, 128, 128)])
def test_products_do_not_depend_on_thread_count(batch, n_in, units):
    before = nv.get_num_threads() if hasattr(nv, "get_num_threads") else _core.num_threads()
    try:
        nv.set_num_threads(1)
        one = _run(batch, n_in, units, seed=3)
        nv.set_num_threads(2)
        two = _run(batch, n_in, units, seed=3)
    finally:
        nv.set_num_threads(before)
    for a, b in zip(one[4:], two[4:]):
        assert np.array_equal(a, b)


# A recurrent layer's step products from W_hh packed once per call
# (PackedB + gemm_prepacked): forward H_{t-1} W_hh (+= into the gates) and
# backward dZ_t W_hh^T, at an LSTM's shapes (G = 4 units) with strided rows
# (a step's rows are every T-th row), and the matrix-vector and
# not-packable cases (one row; depth <= 4; more than 2048 columns) that fall
# back to gemm. The same bits as gemm, at 1 and 2 threads.
@pytest.mark.parametrize("M,K,N,trans_b", [(32, 128, 512, False), (32, 512, 2048, False), (32, 512, 128, True),
                                           (32, 2048, 512, True), (7, 33, 60, False), (256, 96, 384, True),
                                           (1, 128, 512, False), (1, 512, 128, True), (16, 4, 64, False),
                                           (8, 64, 2100, False)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_prepacked_products_are_gemm_bit_for_bit(M, K, N, trans_b, accumulate):
    r = np.random.default_rng(M + K + N)
    steps = 3  # a step's rows: every steps-th row of a (B*T, K) matrix
    a = r.standard_normal((M * steps, K)).astype(np.float32)[1::steps]
    b = r.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    c0 = r.standard_normal((M, N)).astype(np.float32)
    before = _core.num_threads()
    try:
        for threads in (1, 2):
            nv.set_num_threads(threads)
            want, got = c0.copy(), c0.copy()
            _core.gemm(a, b, want, False, trans_b, accumulate)
            _core.gemm(a, b, got, False, trans_b, accumulate, prepacked=True)
            assert np.array_equal(got, want), threads
            ref = (c0 if accumulate else 0) + a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.sqrt(K))
    finally:
        nv.set_num_threads(before)
