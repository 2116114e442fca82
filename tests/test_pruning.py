"""Magnitude pruning: which weights are pruned, that they stay exactly zero
through every training path (fused step, fit, manual loop, L1, FTRL,
max-norm), the sparsity report, and masks in model files."""
import numpy as np
import pytest

import nerve as nv


def digits(n=400):
    x, y = nv.datasets.load_digits()
    return x[:n], y[:n]


def make_model(seed=0, **dense_kw):
    nv.manual_seed(seed)
    return nv.Sequential([nv.layers.Dense(32, activation="relu", **dense_kw),
                          nv.layers.Residual([nv.layers.Dense(32, activation="relu"), nv.layers.Dense(32)]),
                          nv.layers.Dense(10)], input_dim=64)


def kernels(m):
    return [p for p in m.parameters() if p.kind == "kernel"]


def test_layer_scope_prunes_the_smallest_in_each_layer():
    m = make_model()
    before = [p.numpy() for p in m.parameters()]
    rep = nv.pruning.prune_magnitude(m, 0.7, scope="layer")
    for p, b in zip(m.parameters(), before):
        if p.kind != "kernel":
            np.testing.assert_array_equal(p.value, b)  # biases untouched
            continue
        pruned = p.value == 0
        assert pruned.sum() == round(0.7 * p.size)
        np.testing.assert_array_equal(p.value[~pruned], b[~pruned])  # the rest unchanged
        assert np.abs(b[pruned]).max() <= np.abs(b[~pruned]).min()
    assert rep["overall"] == pytest.approx(0.7, abs=1e-3)
    assert [r["layer"] for r in rep["layers"]] == ["0:Dense", "1:Residual/0:Dense", "1:Residual/1:Dense", "2:Dense"]


def test_global_scope_uses_one_threshold():
    m = make_model()
    # Make layer sizes of magnitude differ so global and per-layer pruning differ.
    kernels(m)[0].value[...] *= 10
    before = np.concatenate([p.numpy().ravel() for p in kernels(m)])
    rep = nv.pruning.prune_magnitude(m, 0.5, scope="global")
    after = np.concatenate([p.value.ravel() for p in kernels(m)])
    pruned = after == 0
    assert pruned.sum() == round(0.5 * before.size) == rep["zeros"]
    assert np.abs(before[pruned]).max() <= np.abs(before[~pruned]).min()
    per_layer = [r["sparsity"] for r in rep["layers"]]
    assert per_layer[0] < 0.2 and max(per_layer[1:]) > 0.5  # the scaled-up layer is spared


def test_sparsity_report_counts_zeros():
    m = make_model()
    kernels(m)[1].value[:3] = 0.0
    rep = nv.pruning.sparsity(m)
    n = sum(p.size for p in kernels(m))
    assert rep["weights"] == n and rep["zeros"] == 3 * 32
    assert rep["overall"] == pytest.approx(96 / n)
    assert rep["layers"][1]["sparsity"] == pytest.approx(96 / (32 * 32))


@pytest.mark.parametrize("opt", [lambda: nv.optimizers.Adam(lr=1e-2),
                                 lambda: nv.optimizers.SGD(lr=0.1, momentum=0.9, nesterov=True),
                                 lambda: nv.optimizers.Ftrl(lr=0.1, l1_regularization_strength=1e-3),
                                 lambda: nv.optimizers.RMSprop(lr=1e-3)])
def test_pruned_weights_stay_zero_through_fit(opt):
    x, y = digits()
    m = make_model(kernel_regularizer=nv.regularizers.L1(1e-4), kernel_constraint=nv.constraints.MaxNorm(2.0))
    m.compile(optimizer=opt(), loss="cross_entropy", metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    nv.pruning.prune_magnitude(m, 0.8)
    masks = [p.value == 0 for p in kernels(m)]
    hist = m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    for p, mk in zip(kernels(m), masks):
        assert np.all(p.value[mk] == 0)
        assert np.count_nonzero(p.value[~mk]) > 0.9 * (~mk).sum()  # the rest still train
    assert np.isfinite(hist.history["loss"][-1])
    assert nv.pruning.sparsity(m)["overall"] >= 0.8 - 1e-3


def test_pruned_weights_stay_zero_on_manual_loop_and_train_step():
    x, y = digits(64)
    m = make_model()
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    nv.pruning.prune_magnitude(m, 0.7)
    masks = [p.value == 0 for p in kernels(m)]
    lf = nv.losses.get("cross_entropy")
    for _ in range(3):
        out = m.forward(x, training=True)
        m.backward(lf.backward(out, y))
        assert any(np.any(p.grad[mk] != 0) for p, mk in zip(kernels(m), masks))  # gradients do flow...
        m.optimizer.step()
        m.optimizer.zero_grad()
        m.train_step(x, y)
    for p, mk in zip(kernels(m), masks):
        assert np.all(p.value[mk] == 0)  # ... but the update is masked


def test_pruning_is_cumulative_and_validated():
    m = make_model()
    nv.pruning.prune_magnitude(m, 0.5)
    first = [p.value == 0 for p in kernels(m)]
    # Overwrite the pruned weights by hand: pruning again still counts them as pruned.
    for p, mk in zip(kernels(m), first):
        p.value[mk] = 5.0
    nv.pruning.prune_magnitude(m, 0.6)
    for p, mk in zip(kernels(m), first):
        assert np.all(p.value[mk] == 0)
        assert (p.value == 0).sum() == round(0.6 * p.size)
    for bad in (1.0, -0.1, float("nan"), "half"):
        with pytest.raises(ValueError, match="sparsity"):
            nv.pruning.prune_magnitude(m, bad)
    with pytest.raises(ValueError, match="scope"):
        nv.pruning.prune_magnitude(m, 0.5, scope="row")
    with pytest.raises(ValueError, match="build"):
        nv.pruning.prune_magnitude(nv.Sequential([nv.layers.Dense(3)]), 0.5)


def test_masks_survive_save_and_load(tmp_path):
    x, y = digits()
    m = make_model()
    m.compile(optimizer="adam", loss="cross_entropy")
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    nv.pruning.prune_magnitude(m, 0.75)
    masks = [p.value == 0 for p in kernels(m)]
    m.save(tmp_path / "pruned.nerve")
    m2 = nv.load_model(tmp_path / "pruned.nerve")
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    m2.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for p, mk in zip(kernels(m2), masks):
        assert np.all(p.value[mk] == 0)
    assert nv.pruning.sparsity(m2)["overall"] >= 0.75 - 1e-3


def test_pruned_model_keeps_accuracy_after_fine_tuning():
    x, y = nv.datasets.load_digits()
    m = make_model()
    m.compile(optimizer=nv.optimizers.Adam(lr=3e-3), loss="cross_entropy", metrics=["accuracy"])
    m.fit(x, y, epochs=8, batch_size=32, verbose=0)
    base = m.evaluate(x, y)["accuracy"]
    nv.pruning.prune_magnitude(m, 0.8)
    m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert m.evaluate(x, y)["accuracy"] > base - 0.03
