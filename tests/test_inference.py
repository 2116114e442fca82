"""model.optimize_for_inference(): BatchNorm folded, noise removed, pruned
kernels through the sparse C++ product (checked against numpy), the same
predictions as model.predict within float32 rounding."""
import numpy as np
import pytest

import nerve as nv
from nerve import _core
from conftest import close_to_scale, layer_kind_models, rng

L = nv.layers
# The generic level's GEMM is Eigen's, which packs per call on its own: it keeps no packed kernels.
GENERIC = nv.build_info()["cpu_level"] == "generic"


def pruned(shape, sparsity, seed=0):
    r = rng(seed)
    w = r.standard_normal(shape).astype(np.float32)
    w[r.random(shape) < sparsity] = 0.0
    return w


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 100])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_sparse_product_against_numpy(batch, sparsity):
    w = pruned((37, 29), sparsity)
    x = rng(batch).standard_normal((batch, 37)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64)
    got = _core.sparse_matmul(w, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_sparse_product_is_thread_count_invariant():
    w = pruned((300, 200), 0.9)
    before = nv.get_num_threads()
    try:
        for batch in (1, 5, 96, 257):
            x = rng(batch).standard_normal((batch, 300)).astype(np.float32)
            nv.set_num_threads(1)
            one = _core.sparse_matmul(w, x)
            nv.set_num_threads(2)
            np.testing.assert_array_equal(_core.sparse_matmul(w, x), one)
    finally:
        nv.set_num_threads(before)


def test_sparse_product_refuses_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        _core.sparse_matmul(np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="float32"):
        _core.sparse_matmul(np.zeros((3, 2)), np.zeros((4, 3), np.float32))


@pytest.mark.parametrize("label,model", layer_kind_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_same_predictions_for_every_layer_kind(label, model):
    fast = model.optimize_for_inference()
    for batch in (1, 3, 40):
        x = rng(batch).standard_normal((batch, 6)).astype(np.float32)
        close_to_scale(fast.predict(x), model.predict(x), rtol=2e-6)
    assert fast.output_dim == model.output_dim


def test_batchnorm_folds_both_ways_and_noise_goes():
    nv.manual_seed(0)
    x = rng(0).standard_normal((64, 5)).astype(np.float32)
    model = nv.Sequential([L.BatchNorm(), L.Dense(8, use_bias=False), L.BatchNorm(), L.Dropout(0.3),
                           L.Activation("relu"), L.GaussianNoise(0.5), L.BatchNorm(), L.Maxout(4, 2),
                           L.Dense(6, activation="tanh"), L.BatchNorm(), L.PReLU(), L.Dense(3)], input_dim=5)
    model.compile(optimizer="adam", loss="cross_entropy")
    model.fit(x, np.arange(64) % 3, epochs=3, batch_size=16, verbose=0)
    fast = model.optimize_for_inference()
    r = fast.report
    assert sorted(r["removed"]) == ["3:Dropout", "5:GaussianNoise"]
    assert len(r["folded"]) == 3  # the first before the Dense, the second after it, the third into Maxout
    kinds = [c.type for c in fast._cores]
    # Dense+BN+BN folded into one Dense; the BN after tanh has no affine neighbour (PReLU follows): it stays.
    assert kinds == ["Dense", "Activation", "Maxout", "Dense", "BatchNorm", "PReLU", "Dense"]
    close_to_scale(fast.predict(x), model.predict(x), rtol=2e-6)


def test_pruned_mlp_runs_sparse_above_the_threshold():
    nv.manual_seed(1)
    model = nv.Sequential([L.Dense(64, activation="relu"), L.Dense(32, activation="gelu"),
                           L.Dense(16, activation="crelu"), L.Dense(4)], input_dim=50)
    nv.pruning.prune_magnitude(model, 0.9)
    model.layers[3].kernel.value[...] = rng(3).standard_normal((32, 4))  # this one dense again
    fast = model.optimize_for_inference()
    assert [s["layer"] for s in fast.report["sparse"]] == ["0", "1", "2"]
    assert [c.type for c in fast._cores] == ["SparseDense"] * 3 + ["Dense"]
    nnz = [int(np.count_nonzero(l.kernel.value)) for l in model.layers[:3]]
    assert [c.nnz for c in fast._cores[:3]] == nnz
    for batch in (1, 2, 5, 32, 70, 300):
        x = rng(batch).standard_normal((batch, 50)).astype(np.float32)
        close_to_scale(fast.predict(x, batch_size=128), model.predict(x), rtol=2e-6)
    every = model.optimize_for_inference(sparse_threshold=0.0)  # every Dense sparse: still right
    assert [c.type for c in every._cores] == ["SparseDense"] * 4
    x = rng(9).standard_normal((11, 50)).astype(np.float32)
    close_to_scale(every.predict(x), model.predict(x), rtol=2e-6)
    assert [c.type for c in model.optimize_for_inference(sparse_threshold=1.0)._cores] == ["Dense"] * 4


def test_predict_only_and_independent_of_the_original():
    nv.manual_seed(2)
    model = nv.Sequential([L.Dense(8, activation="relu"), L.BatchNorm(), L.Dense(3)], input_dim=4)
    nv.pruning.prune_magnitude(model, 0.9)
    fast = model.optimize_for_inference(sparse_threshold=0.5)
    x = rng(0).standard_normal((6, 4)).astype(np.float32)
    before = fast.predict(x)
    model.layers[0].kernel.value[...] = 1.0  # the optimized model holds copies
    np.testing.assert_array_equal(fast.predict(x), before)
    with pytest.raises(RuntimeError, match="predict-only"):
        fast.fit(x, np.zeros(6))
    fast._net.forward(x, True)  # the layers are frozen: training mode runs as inference ...
    with pytest.raises(RuntimeError, match="predict-only"):  # ... and no gradient exists
        fast._net.backward(np.ones((6, 3), np.float32), True, True)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 4\)"):
        fast.predict(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        fast.predict(np.full((2, 4), np.nan, np.float32))
    np.testing.assert_array_equal(fast.predict(x.astype(np.float64)), before)
    with pytest.raises(ValueError, match="sparse_threshold"):
        model.optimize_for_inference(sparse_threshold=2)
    assert "SparseDense" in fast.summary(print_fn=None)


def test_moderately_sparse_layers_keep_a_dense_copy_for_single_rows():
    nv.manual_seed(5)
    model = nv.Sequential([L.Dense(40, activation="relu"), L.Dense(30, activation="tanh"), L.Dense(3)],
                          input_dim=20)
    nv.pruning.prune_magnitude(model, 0.75)
    fast = model.optimize_for_inference()
    assert [s["single_rows"] for s in fast.report["sparse"]] == ["dense"] * 3  # 0.75 < 0.87
    assert all(c.dense_single_rows for c in fast._cores)
    for batch in (1, 2, 9):
        x = rng(batch).standard_normal((batch, 20)).astype(np.float32)
        close_to_scale(fast.predict(x), model.predict(x), rtol=2e-6)
    nv.pruning.prune_magnitude(model, 0.95)
    fast = model.optimize_for_inference()
    assert [s["single_rows"] for s in fast.report["sparse"]] == ["sparse"] * 3
    x = rng(0).standard_normal((1, 20)).astype(np.float32)
    close_to_scale(fast.predict(x), model.predict(x), rtol=2e-6)


SKINNY_MAX = _core.skinny_max_rows  # 16; 32 at avx512


def test_skinny_bound_follows_the_level():
    assert SKINNY_MAX == (32 if nv.build_info()["cpu_level"] == "avx512" else 16)


@pytest.mark.parametrize("rows", [2, 3, 5, 7, 8, 12, 13, 16, 17, 25, 32])
def test_skinny_product_against_numpy(rows):
    # Dense's forward at batches of 2-16 (2-32 at avx512; predict and training)
    # reads the kernel unpacked (skinny_gemm): row blocks of 1-12 rows, strips
    # of 2 and 4 vectors, the 8-column and scalar rest.
    if rows > SKINNY_MAX:  # past this level's bound: refused, the packed GEMM takes it
        with pytest.raises(ValueError, match=f"skinny_gemm takes 2 <= M <= {SKINNY_MAX}"):
            _core.skinny_gemm(np.zeros((rows, 16), np.float32), np.zeros((16, 8), np.float32))
        return
    for n, k in ((512, 784), (10, 256), (37, 40), (8, 16), (56, 20)):
        a = rng(rows).standard_normal((rows, k)).astype(np.float32)
        b = rng(n).standard_normal((k, n)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(_core.skinny_gemm(a, b), want, rtol=1e-5, atol=2e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="skinny_gemm takes"):
        _core.skinny_gemm(np.zeros((SKINNY_MAX + 1, 16), np.float32), np.zeros((16, 8), np.float32))


def test_small_batch_predict_matches_training_forward_and_threads():
    nv.manual_seed(3)
    # 800 inputs: deeper than one depth block of the packed GEMM (392), whose
    # sums then differ in rounding from skinny_gemm's single chain over k.
    model = nv.Sequential([L.Dense(64, activation="relu"), L.Dense(20, activation="tanh"), L.Dense(5)], input_dim=800)
    before = nv.get_num_threads()
    try:
        for batch in (2, 5, 16, 17, SKINNY_MAX, SKINNY_MAX + 1):
            x = rng(batch).standard_normal((batch, 800)).astype(np.float32)
            nv.set_num_threads(1)
            one, train_one = model.predict(x), model.forward(x, training=True)
            nv.set_num_threads(2)
            np.testing.assert_array_equal(model.predict(x), one)  # thread-count invariant
            np.testing.assert_array_equal(model.forward(x, training=True), train_one)
            # Training takes predict's product: skinny_gemm up to SKINNY_MAX rows, then the packed GEMM.
            np.testing.assert_array_equal(train_one, one)
    finally:
        nv.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_packed_dense_kernels_give_the_bits_of_predict(threads):
    # The predict-only model keeps its dense kernels packed for the GEMM;
    # every batch size's tiles read the kept panels instead of packing their
    # own: the same bits as model.predict (whose products pack per call),
    # at batch sizes that take the vector, skinny, one-tile, column-tiled
    # and row-tiled paths, and widths below and above one 16-column panel.
    nv.manual_seed(5)
    model = nv.Sequential([L.Dense(512, activation="relu"), L.Dense(200, activation="tanh"),
                           L.Maxout(40, 3), L.Dense(10)], input_dim=300)
    fast = model.optimize_for_inference()
    assert len(fast.report["packed"]) == (0 if GENERIC else 4)
    before = nv.get_num_threads()
    try:
        nv.set_num_threads(threads)
        for batch in (1, 2, 17, 40, 64, 130, 256, 700, 1500):
            x = rng(batch).standard_normal((batch, 300)).astype(np.float32)
            np.testing.assert_array_equal(fast.predict(x, batch_size=batch), model.predict(x, batch_size=batch))
    finally:
        nv.set_num_threads(before)


def test_a_packed_kernel_keeps_the_bits_and_shallow_kernels_stay_unpacked():
    nv.manual_seed(0)
    layer = L.Dense(96)
    model = nv.Sequential([layer], input_dim=50)
    x = rng(1).standard_normal((300, 50)).astype(np.float32)
    want = model.predict(x)
    layer._core.pack_kernel()
    assert layer._core.kernel_packed != GENERIC
    np.testing.assert_array_equal(model.predict(x), want)
    # Depth <= 4 is never packed (the small-depth product reads B as it lies).
    shallow = nv.Sequential([L.Dense(32)], input_dim=3)
    shallow.layers[0]._core.pack_kernel()
    assert not shallow.layers[0]._core.kernel_packed
