"""Dense forward (Z = X W, then the bias + activation tail) on every path of
the product: packed row and column tiles, whole-B row tiles, several depth
blocks, partial micro-panels, the depth-1-to-4 update, Eigen's matrix-vector
and tiny products, the batch-1 vector product split by depth.

The oracle is the composition of kernels tested on their own: _core.gemm
(against numpy in test_gemm_kernel.py), the bias added in float32 (one
rounding, as in the kernel), then activation_forward (against formulas in
test_activations.py). Every element must come out with the same bits, on 1
and 2 threads.
"""
import numpy as np
import pytest

import nerve as nv
from conftest import core_dense
from nerve import _core

# (batch, in, units): 2 column tiles of 128 + 72 with 2 depth blocks of 392;
# 3 row tiles packed whole (1030 rows); partial 6-row and 16-column panels;
# depth 3 (a rank-3 update) in 2 row tiles and in one; Eigen's matrix-vector
# (batch 1) and tiny (3 x 5 x 7) products; the batch-1 product split by depth
# (300 >= 256 input features).
SHAPES = [(512, 784, 200), (1030, 300, 20), (130, 40, 33), (4096, 3, 64), (64, 3, 40), (1, 20, 30),
          (3, 5, 7), (1, 300, 64)]

# Every elementwise activation, and three that are not (their tail stays a
# pass of its own after the product).
ACTIVATIONS = [("relu", {}), ("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"alpha": 0.1}), ("elu", {}),
               ("selu", {}), ("relu6", {}), ("binary_step", {}), ("swish", {}), ("swish", {"beta": 1.7}),
               ("gelu", {}), ("gelu", {"approximate": 1}), ("softplus", {}), ("mish", {}),
               ("hard_sigmoid", {}), ("hard_swish", {}), ("rrelu", {}), ("identity", {}),
               ("softmax", {}), ("log_softmax", {}), ("crelu", {})]


def _oracle(act, x, w, b):
    z = np.zeros((x.shape[0], w.shape[1]), np.float32)
    _core.gemm(x, w, z, False, False, False)
    return _core.activation_forward(act, z + b, False)


@pytest.mark.parametrize("batch,n_in,units", SHAPES)
@pytest.mark.parametrize("name,params", ACTIVATIONS)
def test_forward_matches_unfused_kernels(name, params, batch, n_in, units):
    act = _core.make_activation(name, {k: float(v) for k, v in params.items()})
    layer, _, w, b = core_dense(act, n_in, units, seed=batch + n_in, scale=0.3)
    x = np.random.default_rng(units).standard_normal((batch, n_in)).astype(np.float32)
    y = layer.forward_np(x, False)
    want = _oracle(act, x, w, b)
    assert y.shape == want.shape
    assert np.array_equal(y.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", ["relu", "gelu", "tanh"])
def test_forward_same_bits_on_one_and_two_threads(name):
    act = _core.make_activation(name, {})
    layer, _, w, b = core_dense(act, 784, 300, seed=1, scale=0.1)
    x = np.random.default_rng(2).standard_normal((700, 784)).astype(np.float32)
    before = nv.get_num_threads()
    try:
        out = {}
        for threads in (1, 2):
            nv.set_num_threads(threads)
            out[threads] = layer.forward_np(x, True)
    finally:
        nv.set_num_threads(before)
    assert np.array_equal(out[1].view(np.uint32), out[2].view(np.uint32))
    assert np.array_equal(out[1].view(np.uint32), _oracle(act, x, w, b).view(np.uint32))


def test_relu_forward_against_numpy():
    act = _core.make_activation("relu", {})
    layer, _, w, b = core_dense(act, 784, 200, seed=3)
    x = np.random.default_rng(4).standard_normal((512, 784)).astype(np.float32)
    want = np.maximum(x.astype(np.float64) @ w + b, 0.0)
    np.testing.assert_allclose(layer.forward_np(x, True), want, rtol=1e-4, atol=1e-4)
