"""The optimizer update fused into Dense's backward (train_step at batches of
1 to 4) gives the same bits as the separate update pass: parameters,
gradients, optimizer state and loss, for every optimizer, with penalties,
clipping, pruning masks, max-norm, frozen layers, layers with and without
bias, and on 1 or 2 threads. Network.fuse_updates = False forces the
separate pass."""
import numpy as np
import pytest

import nerve as nv

L = nv.layers

OPTIMIZERS = {
    "sgd": lambda: nv.optimizers.SGD(lr=0.05),
    "sgd_wd": lambda: nv.optimizers.SGD(lr=0.05, weight_decay=1e-2),
    "momentum": lambda: nv.optimizers.SGD(lr=0.05, momentum=0.9, dampening=0.1),
    "nesterov": lambda: nv.optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adagrad": lambda: nv.optimizers.Adagrad(lr=0.05, lr_decay=1e-3, weight_decay=1e-3,
                                             initial_accumulator_value=0.1),
    "rmsprop": lambda: nv.optimizers.RMSprop(lr=1e-2),
    "rmsprop_centered_momentum": lambda: nv.optimizers.RMSprop(lr=1e-2, centered=True, momentum=0.8,
                                                               weight_decay=1e-3),
    "rmsprop_nesterov": lambda: nv.optimizers.RMSprop(lr=1e-2, momentum=0.8, nesterov=True),
    "adadelta": lambda: nv.optimizers.Adadelta(lr=1.0, weight_decay=1e-3),
    "adam": lambda: nv.optimizers.Adam(lr=1e-2),
    "adam_wd": lambda: nv.optimizers.Adam(lr=1e-2, weight_decay=1e-2),
    "amsgrad": lambda: nv.optimizers.Adam(lr=1e-2, amsgrad=True),
    "adamw": lambda: nv.optimizers.AdamW(lr=1e-2, weight_decay=0.05, amsgrad=True,
                                         exclude_from_weight_decay=("bias",)),
    "adamax": lambda: nv.optimizers.Adamax(lr=1e-2, weight_decay=1e-3),
    "nadam": lambda: nv.optimizers.NAdam(lr=1e-2, weight_decay=1e-3),
    "ftrl": lambda: nv.optimizers.Ftrl(lr=0.1, l1_regularization_strength=1e-3, l2_regularization_strength=1e-2,
                                       l2_shrinkage_regularization_strength=1e-3, beta=0.1),
    "ftrl_power": lambda: nv.optimizers.Ftrl(lr=0.1, learning_rate_power=-0.7, l1_regularization_strength=1e-3),
    "ftrl_power0": lambda: nv.optimizers.Ftrl(lr=0.1, learning_rate_power=0.0, l2_shrinkage_regularization_strength=1e-2),
    "lion": lambda: nv.optimizers.Lion(lr=1e-3),
    "lion_wd": lambda: nv.optimizers.Lion(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.5),
    "adabelief": lambda: nv.optimizers.AdaBelief(lr=1e-2, weight_decay=1e-2),
    "adabelief_l2_amsgrad": lambda: nv.optimizers.AdaBelief(lr=1e-2, weight_decay=1e-2, weight_decouple=False,
                                                            amsgrad=True, rectify=False),
    "adam_clipvalue": lambda: nv.optimizers.Adam(lr=1e-2, clipvalue=0.01),
    "sgd_clipnorm": lambda: nv.optimizers.SGD(lr=0.05, momentum=0.9, clipnorm=0.1),  # never fused
    "adam_global_clipnorm": lambda: nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.1, clipvalue=0.05),
}

IN, OUT = 11, 5


def build(opt, batch, fuse, width=13, prune=False, frozen=False):
    nv.manual_seed(7)
    reg = dict(kernel_regularizer=nv.regularizers.L1L2(1e-3, 1e-2), bias_regularizer=nv.regularizers.L2(1e-2))
    layers = [L.Dense(width, activation="tanh", kernel_constraint=nv.constraints.MaxNorm(0.9), **reg),
              L.Dense(9, activation="relu", use_bias=False, kernel_regularizer=nv.regularizers.L1(2e-3),
                      trainable=not frozen),
              L.PReLU(shared=False),
              L.Residual([L.Dense(9, activation="elu", kernel_regularizer=nv.regularizers.L2(1e-2)),
                          L.Dense(9, kernel_constraint=nv.constraints.MaxNorm(0.7, axis=1))]),
              L.Maxout(6, pieces=2)]
    if batch >= 2:  # batch norm trains on 2 rows or more
        layers.append(L.BatchNorm())
    layers.append(L.Dense(OUT, **reg))
    return compiled(layers, opt, fuse, prune)


def compiled(layers, opt, fuse, prune):
    m = nv.Sequential(layers, input_dim=IN)
    m.compile(optimizer=opt(), loss="cross_entropy")
    m._net.fuse_updates = fuse
    if prune:
        nv.pruning.prune_magnitude(m, 0.4)
    return m


def build_outer(opt, batch, fuse, prune=False, frozen=False):
    """Penalty-free layers 8 or 16 wide: the optimizer makes their gradient
    from its factors in the update's own pass (Optimizer::update_outer); the
    5-wide output layer (not whole vectors) takes the write-g-then-update path."""
    nv.manual_seed(5)
    layers = [L.Dense(16, activation="tanh", kernel_constraint=nv.constraints.MaxNorm(0.9)),
              L.Dense(8, activation="relu", use_bias=False, trainable=not frozen),
              L.Residual([L.Dense(8, activation="elu"), L.Dense(8, kernel_constraint=nv.constraints.MaxNorm(0.7, axis=1))]),
              L.Dense(OUT)]
    return compiled(layers, opt, fuse, prune)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def state(m):
    core = m.optimizer._core
    out = [("iterations", np.array([core.iterations])), ("scalars", np.array(core.scalar_state))]
    for layer_index, layer in enumerate(m.layers):
        for k, p in enumerate(layer.parameters()):
            out.append((f"layer {layer_index} param {k} value", bits(p.value)))
            out.append((f"layer {layer_index} param {k} grad", bits(p.grad)))
    for i, name in enumerate(core.slot_names):
        out.append((f"slot {name}", bits(core.slot(i))))
    return out


def assert_same(a, b, where):
    sa, sb = state(a), state(b)
    assert [n for n, _ in sa] == [n for n, _ in sb]
    for (name, x), (_, y) in zip(sa, sb):
        assert np.array_equal(x, y), f"{where}: {name} differs"


def run_pair(opt, batch, threads=1, steps=4, builder=build, **kw):
    fused, plain = builder(opt, batch, True, **kw), builder(opt, batch, False, **kw)
    r = np.random.default_rng(batch)
    x = r.standard_normal((steps * batch, IN)).astype(np.float32)
    y = r.integers(0, OUT, steps * batch)
    before = nv.get_num_threads()
    nv.set_num_threads(threads)
    try:
        for s in range(steps):
            xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
            lf, lp = fused.train_step(xb, yb), plain.train_step(xb, yb)
            assert np.float64(lf).tobytes() == np.float64(lp).tobytes(), f"step {s}: loss {lf} != {lp}"
            assert_same(fused, plain, f"step {s}")
    finally:
        nv.set_num_threads(before)
    return fused


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_fused_step_is_bit_identical(name, batch):
    m = run_pair(OPTIMIZERS[name], batch)
    assert np.all(np.isfinite(m.layers[0].kernel.value))


@pytest.mark.parametrize("name", ["adam", "nesterov", "ftrl", "adam_clipvalue"])
def test_fused_step_with_pruning_and_frozen_layer(name):
    m = run_pair(OPTIMIZERS[name], 1, prune=True, frozen=True)
    assert np.any(m.layers[0].kernel.value == 0)  # pruned weights stay exactly zero


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_gradient_made_in_the_update_pass_is_bit_identical(name, batch):
    m = run_pair(OPTIMIZERS[name], batch, builder=build_outer)
    assert np.all(np.isfinite(m.layers[0].kernel.value))
    assert np.any(m.layers[0].kernel.grad != 0)


@pytest.mark.parametrize("name", ["adam", "momentum", "ftrl", "adam_clipvalue"])
def test_gradient_made_in_the_update_pass_with_pruning_and_frozen_layer(name):
    m = run_pair(OPTIMIZERS[name], 2, builder=build_outer, prune=True, frozen=True)
    assert np.any(m.layers[0].kernel.value == 0)


def test_gradient_made_in_the_update_pass_matches_numpy():
    # Dense(8), batch 2, Adam's first step: g = x^T dz (stored in .grad), m = (1-b1) g,
    # v = (1-b2) g^2, W -= lr m/(1-b1) / (sqrt(v/(1-b2)) + eps).
    nv.manual_seed(4)
    m = nv.Sequential([L.Dense(8, use_bias=False)], input_dim=3)
    m.compile(optimizer=nv.optimizers.Adam(lr=0.1), loss="mse")
    w0 = m.layers[0].kernel.value.astype(np.float64)
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3)).astype(np.float32)
    t = r.standard_normal((2, 8)).astype(np.float32)
    m.train_step(x, t)
    x64 = x.astype(np.float64)
    g = x64.T @ (2.0 * (x64 @ w0 - t) / t.size)
    np.testing.assert_allclose(m.layers[0].kernel.grad, g, rtol=1e-5, atol=1e-8)
    mh, vh = g, g * g  # bias-corrected moments after one step
    np.testing.assert_allclose(m.layers[0].kernel.value, w0 - 0.1 * mh / (np.sqrt(vh) + 1e-8), rtol=1e-5, atol=1e-6)


def wide(opt, batch, fuse, penalty=True):
    # A first layer big enough (300 x 256) that its pass splits over threads;
    # without the penalty the optimizer makes its gradient (update_outer).
    nv.manual_seed(11)
    reg = nv.regularizers.L1L2(1e-4, 1e-3) if penalty else None
    m = nv.Sequential([L.Dense(256, activation="relu", kernel_regularizer=reg),
                       L.Dense(64, activation="tanh", use_bias=False), L.Dense(OUT)], input_dim=300)
    m.compile(optimizer=opt(), loss="cross_entropy")
    m._net.fuse_updates = fuse
    return m


@pytest.mark.parametrize("penalty", [True, False])
@pytest.mark.parametrize("batch", [1, 4])
def test_fused_step_on_two_threads(batch, penalty):
    r = np.random.default_rng(batch)
    x = r.standard_normal((3 * batch, 300)).astype(np.float32)
    y = r.integers(0, OUT, 3 * batch)
    runs = {}
    before = nv.get_num_threads()
    try:
        for threads, fuse in ((1, True), (2, True), (2, False)):
            nv.set_num_threads(threads)
            m = wide(OPTIMIZERS["amsgrad"], batch, fuse, penalty)
            losses = [m.train_step(x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]) for s in range(3)]
            runs[threads, fuse] = (m, np.array(losses))
    finally:
        nv.set_num_threads(before)
    (one, l1), (two, l2), (plain, lp) = runs[1, True], runs[2, True], runs[2, False]
    assert l1.tobytes() == l2.tobytes() == lp.tobytes()
    assert_same(one, two, "fused, 1 vs 2 threads")
    assert_same(two, plain, "2 threads, fused vs separate update")


def test_fused_sgd_step_matches_numpy():
    # One Dense layer, batch 1, SGD with an L1L2 penalty: W -= lr (x^T dz + l1 sign W + 2 l2 W).
    nv.manual_seed(3)
    m = nv.Sequential([L.Dense(3, kernel_regularizer=nv.regularizers.L1L2(1e-2, 1e-1))], input_dim=4)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.5), loss="mse")
    assert m._net.fuse_updates
    w0, b0 = m.layers[0].kernel.value.copy(), m.layers[0].bias.value.copy()
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    t = np.array([[1.0, 0.0, -1.0]], np.float32)
    m.train_step(x, t)
    x64, w64 = x.astype(np.float64), w0.astype(np.float64)
    dz = 2.0 * (x64 @ w64 + b0 - t) / t.size
    g = x64.T @ dz + 1e-2 * np.sign(w64) + 2e-1 * w64
    np.testing.assert_allclose(m.layers[0].kernel.grad, g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.layers[0].kernel.value, w64 - 0.5 * g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.layers[0].bias.value, b0 - 0.5 * dz[0], rtol=1e-5, atol=1e-7)


def test_fuse_switch_round_trips():
    m = build(OPTIMIZERS["adam"], 1, True)
    m._net.fuse_updates = False
    assert m._net.fuse_updates is False
    m._net.fuse_updates = True
    assert m._net.fuse_updates is True
