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
