"""Dense backward where dW = X^T dZ packs dZ once for the whole product
(gemm_b_pass in cpp/src/gemm.cpp): the activation's derivative (dZ made from
dY in place) and the bias gradient (dZ's column sums) are made in the sweep
that packs dZ, not in passes of their own.

The oracle is the unfused composition of kernels tested on their own:
activation_backward (against formulas in test_activations.py), then
_core.gemm (against numpy in test_gemm_kernel.py) for dW and dX, which must
give the same bits; the bias gradient, summed in blocks of rows, is held
against float64 numpy.
"""
import numpy as np
import pytest

import nerve as nv
from conftest import core_dense
from nerve import _core

# (batch, in, units). All but the last reach the fused path: dW's row tiles
# span all columns, so dZ is packed once (784 and 300 input rows make 4 row
# tiles; 200 x 130 is cut into 4; the logits layer's 256 x 10 into 2). 1030
# rows make 3 depth blocks of 342-344 rows, each summed in 64-row pieces, the
# last of them short; 130 rows make one block of 3 pieces. 64 x 40 x 30 is
# one tile: the unfused passes.
SHAPES = [(512, 784, 64), (300, 200, 130), (512, 256, 10), (130, 784, 40), (1030, 300, 20),
          (64, 40, 30)]

# Elementwise derivatives from y (relu ... relu6), from z (swish ... rrelu in
# evaluation), and dz = dy (identity, straight-through step), plus two that
# are not elementwise and keep the separate passes (rrelu in training,
# softmax).
ACTIVATIONS = [("relu", {}, False), ("sigmoid", {}, False), ("tanh", {}, False),
               ("leaky_relu", {"alpha": 0.1}, False), ("elu", {}, False), ("selu", {}, False),
               ("relu6", {}, False), ("binary_step", {}, False), ("swish", {}, False),
               ("gelu", {}, False), ("softplus", {}, False), ("mish", {}, False),
               ("hard_sigmoid", {}, False), ("hard_swish", {}, False), ("rrelu", {}, False),
               ("identity", {}, False), ("binary_step", {"straight_through": 1}, False),
               ("rrelu", {}, True), ("softmax", {}, False)]


def _backward(name, params, training, batch, n_in, units, seed=0):
    """The layer's own backward: (x, z, y, dy, w, dW, db, dX); dW and db start at
    0.25 and 0.5 (backward accumulates)."""
    act = _core.make_activation(name, {k: float(v) for k, v in params.items()})
    layer, arena, w, b = core_dense(act, n_in, units, seed, scale=0.3)
    r = np.random.default_rng(seed + 1)
    x = r.standard_normal((batch, n_in)).astype(np.float32)
    dy = r.standard_normal((batch, units)).astype(np.float32)
    y = layer.forward_np(x, training)
    z = np.zeros((batch, units), np.float32)
    _core.gemm(x, w, z, False, False, False)
    z = z + b  # what forward keeps as the pre-activation: one rounding, as in the kernel
    gw = arena.grads(0, n_in * units).reshape(n_in, units)
    gb = arena.grads(n_in * units, units)
    gw[...] = 0.25
    gb[...] = 0.5
    dx = layer.backward_np(x, y, dy, training, 0, 0, True)
    return act, x, z, y, dy, w.copy(), gw.copy(), gb.copy(), dx


@pytest.mark.parametrize("batch,n_in,units", SHAPES)
@pytest.mark.parametrize("name,params,training", ACTIVATIONS)
def test_backward_matches_unfused_kernels(name, params, training, batch, n_in, units):
    act, x, z, y, dy, w, gw, gb, dx = _backward(name, params, training, batch, n_in, units)
    dz = _core.activation_backward(act, z, y, dy, training)
    want_gw = np.full_like(gw, 0.25)
    _core.gemm(x, dz, want_gw, True, False, True)
    want_dx = np.zeros_like(dx)
    _core.gemm(dz, w, want_dx, False, True, False)
    assert np.array_equal(gw, want_gw)
    assert np.array_equal(dx, want_dx)
    np.testing.assert_allclose(gb, 0.5 + dz.astype(np.float64).sum(axis=0),
                               rtol=1e-5, atol=1e-5 * np.sqrt(batch))


def test_relu_gradients_against_numpy():
    # The whole chain against numpy alone, for the common case.
    act, x, z, y, dy, w, gw, gb, dx = _backward("relu", {}, False, 512, 784, 64)
    dz = dy.astype(np.float64) * (z > 0)
    np.testing.assert_allclose(gw, 0.25 + x.astype(np.float64).T @ dz, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gb, 0.5 + dz.sum(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, dz @ w.astype(np.float64).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,n_in,units", SHAPES[:5])
def test_backward_does_not_depend_on_thread_count(batch, n_in, units):
    before = _core.num_threads()
    try:
        nv.set_num_threads(1)
        one = _backward("gelu", {}, False, batch, n_in, units, seed=5)
        nv.set_num_threads(2)
        two = _backward("gelu", {}, False, batch, n_in, units, seed=5)
    finally:
        nv.set_num_threads(before)
    for a, b in zip(one[6:], two[6:]):
        assert np.array_equal(a, b)


def test_nan_in_dy_reaches_the_bias_and_weight_gradients():
    # The pass must not drop what it rewrites: a NaN in dY (relu on) shows in
    # its column's bias gradient and weight column, and nowhere else.
    act = _core.make_activation("relu", {})
    layer, arena, w, b = core_dense(act, 784, 64, 0, scale=0.3)
    r = np.random.default_rng(1)
    x = r.standard_normal((512, 784)).astype(np.float32)
    y = layer.forward_np(x, True)
    row = int(np.argmax(y[:, 3] > 0))
    dy = r.standard_normal((512, 64)).astype(np.float32)
    dy[row, 3] = np.nan
    layer.backward_np(x, y, dy, True, 0, 0, False)
    gb = arena.grads(784 * 64, 64)
    gw = arena.grads(0, 784 * 64).reshape(784, 64)
    assert np.isnan(gb[3]) and np.isfinite(np.delete(gb, 3)).all()
    assert np.isnan(gw[:, 3]).any() and np.isfinite(np.delete(gw, 3, axis=1)).all()
