"""Transfer learning: reusing layers of a saved model (shared or copied),
freezing (no gradient, no update, no optimizer state) and fit(cache_frozen=True)."""
import numpy as np
import pytest

import nerve as nv


def data(n=240, d=12, classes=4, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    w = r.standard_normal((d, classes))
    y = np.argmax(np.tanh(x @ w) + 0.3 * r.standard_normal((n, classes)), axis=1).astype(np.int64)
    return x, y


def pretrained(tmp_path, seed=0):
    x, y = data(seed=seed)
    nv.manual_seed(seed)
    base = nv.Sequential([nv.layers.Dense(32, activation="elu"), nv.layers.Dense(24, activation="tanh"),
                          nv.layers.Dense(4)], input_dim=12)
    base.compile(optimizer="adam", loss="cross_entropy")
    base.fit(x, y, epochs=2, verbose=0, seed=0)
    path = tmp_path / "base.nerve"
    base.save(path)
    return nv.load_model(path)


def test_shared_layers_are_the_same_objects(tmp_path):
    base = pretrained(tmp_path)
    new = nv.Sequential([base.layers[0], base.layers[1], nv.layers.Dense(3)], input_dim=12)
    assert new.layers[0].kernel is base.layers[0].kernel
    x = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    # The shared prefix computes what it computed in the base model.
    h_base = base.layers[1].forward(base.layers[0].forward(x))
    new.layers[0].kernel.value[0, 0] += 1.0          # writes through to the base model
    assert base.layers[0].kernel.value[0, 0] == new.layers[0].kernel.value[0, 0]
    assert not np.array_equal(base.layers[1].forward(base.layers[0].forward(x)), h_base)


def test_copied_layers_are_independent(tmp_path):
    base = pretrained(tmp_path)
    c0, c1 = base.layers[0].copy(), nv.layers.clone(base.layers[1])
    new = nv.Sequential([c0, c1, nv.layers.Dense(3)], input_dim=12)
    assert c0.get_config() == base.layers[0].get_config()
    for a, b in zip(c0.parameters() + c1.parameters(), base.layers[0].parameters() + base.layers[1].parameters()):
        assert a is not b and np.array_equal(a.value, b.value)
    # the copies live in the new model's arena (contiguous with the new head)
    ps = new.parameters()
    addr = [p.value.__array_interface__["data"][0] for p in ps]
    assert all(b - a == 4 * p.size for a, b, p in zip(addr, addr[1:], ps))
    before = base.get_weights()
    c0.kernel.value[...] = 0.0
    for a, b in zip(base.get_weights(), before):
        assert np.array_equal(a, b)
    # an unbuilt layer copies its config only
    fresh = nv.layers.Dense(7, activation="relu").copy()
    assert not fresh.built and fresh.units == 7 and fresh.activation.name == "relu"
    with pytest.raises(ValueError):
        nv.layers.clone("Dense")


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum", "rmsprop"])
def test_frozen_layers_get_no_update_no_gradient_no_state(tmp_path, opt):
    base = pretrained(tmp_path)
    x, y = data(seed=2)
    l0, l1 = base.layers[0], base.layers[1]
    l0.trainable = False
    l1.trainable = False
    head = nv.layers.Dense(3)
    new = nv.Sequential([l0, l1, nv.layers.Dense(16, activation="relu"), head], input_dim=12)
    optimizer = {"adam": nv.optimizers.Adam(lr=1e-2), "sgd_momentum": nv.optimizers.SGD(lr=0.1, momentum=0.9),
                 "rmsprop": nv.optimizers.RMSprop(lr=1e-2)}[opt]
    new.compile(optimizer=optimizer, loss="cross_entropy")
    frozen = l0.parameters() + l1.parameters()
    frozen_before = [p.value.copy() for p in frozen]
    for p in frozen:
        p.grad[...] = 0.0
    trainable_before = [p.value.copy() for p in new.trainable_parameters()]
    new.fit(x, y % 3, epochs=3, batch_size=16, verbose=0, seed=0)
    # bit-identical frozen weights; no gradient was ever written into them
    for p, b in zip(frozen, frozen_before):
        assert np.array_equal(p.value, b)
        assert not np.any(p.grad)
    assert all(not np.array_equal(p.value, b) for p, b in zip(new.trainable_parameters(), trainable_before))
    # the optimizer holds exactly the trainable tensors, and its state is sized for them only
    ids = {id(p) for p in optimizer.params}
    assert ids == {id(p) for p in new.trainable_parameters()}
    assert not ids & {id(p) for p in frozen}
    n_trainable = sum(p.size for p in new.trainable_parameters())
    assert optimizer._core.total_size == n_trainable
    for name, slot in optimizer.state_dict()["slots"].items():
        assert slot.size == n_trainable, name
    summary = new.summary(print_fn=None)
    assert summary.count("frozen") >= 2 and f"trainable: {n_trainable:,}" in summary


def test_unfreezing_rebinds_the_optimizer():
    x, y = data()
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(16, activation="tanh"), nv.layers.Dense(4)], input_dim=12)
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
    m.layers[0].trainable = False
    m.fit(x, y, epochs=1, verbose=0)
    assert m.optimizer._core.total_size == 16 * 4 + 4
    w0 = m.layers[0].kernel.value.copy()
    m.layers[0].trainable = True                      # unfreeze for fine-tuning
    m.fit(x, y, epochs=1, verbose=0)
    assert m.optimizer._core.total_size == sum(p.size for p in m.parameters())
    assert not np.array_equal(m.layers[0].kernel.value, w0)
    m.layers[1].trainable = False                     # train_step rebinds too
    w1 = m.layers[1].kernel.value.copy()
    m.train_step(x[:8], y[:8])
    assert np.array_equal(m.layers[1].kernel.value, w1)
    assert m.optimizer._core.total_size == 12 * 16 + 16


def frozen_model(seed=4, rrelu_frozen=False):
    nv.manual_seed(seed)
    layers = [nv.layers.Dense(48, activation="relu", trainable=False),
              nv.layers.Activation("rrelu", trainable=not rrelu_frozen) if rrelu_frozen else
              nv.layers.Activation("tanh"),
              nv.layers.Dense(32, activation="sigmoid", trainable=False,
                              kernel_regularizer=nv.regularizers.L2(1e-3)),
              nv.layers.Dense(24, activation="elu", kernel_regularizer=nv.regularizers.L2(1e-3)),
              nv.layers.Activation("rrelu"),                # random, but after the cached part
              nv.layers.Dense(4)]
    m = nv.Sequential(layers, input_dim=12)
    m.compile(optimizer=nv.optimizers.Adam(lr=3e-3), loss="cross_entropy", metrics=["accuracy"])
    return m


@pytest.mark.parametrize("rrelu_frozen", [False, True])
def test_cache_frozen_is_bit_identical_without_shuffling(rrelu_frozen):
    x, y = data(n=300)
    runs = []
    for cache in (False, True):
        m = frozen_model(rrelu_frozen=rrelu_frozen)
        h = m.fit(x[:250], y[:250], epochs=4, batch_size=20, shuffle=False, validation_data=(x[250:], y[250:]),
                  verbose=0, cache_frozen=cache)
        runs.append((m, h))
    (a, ha), (b, hb) = runs
    for p, q in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(p, q)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    assert ha.history["val_loss"] == hb.history["val_loss"]
    assert ha.history["accuracy"] == hb.history["accuracy"]
    # the random layer after the cache drew the same slopes: the step counters agree
    assert a._net.step == b._net.step == 4 * 13
    # optimizer state continues identically
    for k, v in a.optimizer.state_dict()["slots"].items():
        assert np.array_equal(v, b.optimizer.state_dict()["slots"][k])


def test_cache_frozen_shuffled_matches_to_rounding():
    # Shuffled rows sit at other positions of the GEMM tiles than in the cache
    # pass, which changes float32 rounding by ~1 ulp; the runs agree to that level.
    x, y = data(n=300)
    out = []
    for cache in (False, True):
        m = frozen_model()
        m.fit(x, y, epochs=3, batch_size=32, verbose=0, seed=7, cache_frozen=cache)
        out.append(m.get_weights())
    for p, q in zip(*out):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


def test_cache_frozen_refuses_when_not_applicable():
    x, y = data()
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.Dense(4)], input_dim=12)
    m.compile(optimizer="adam", loss="cross_entropy")
    w = m.get_weights()
    with pytest.raises(ValueError, match="layer 0 .*trainable"):
        m.fit(x, y, epochs=1, verbose=0, cache_frozen=True)
    m.layers[0].trainable = m.layers[1].trainable = False
    with pytest.raises(ValueError, match="nothing to train"):
        m.fit(x, y, epochs=1, verbose=0, cache_frozen=True)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu", trainable=False), nv.layers.Activation("rrelu"),
                       nv.layers.Dense(4)], input_dim=12)
    m.compile(optimizer="adam", loss="cross_entropy")
    w = m.get_weights()
    with pytest.raises(ValueError, match="layer 1 .*random in training"):
        m.fit(x, y, epochs=1, verbose=0, cache_frozen=True)
    m.layers[1].trainable = False
    aug = nv.augment.Compose([nv.augment.RandomShift(1)], image_shape=(3, 4))
    with pytest.raises(ValueError, match="augment"):
        m.fit(x, y, epochs=1, verbose=0, cache_frozen=True, augment=aug)
    for a, b in zip(m.get_weights(), w):
        assert np.array_equal(a, b)
    m.fit(x, y, epochs=1, verbose=0, cache_frozen=True)       # now applicable


def test_layers_declare_determinism():
    assert nv.layers.Dense(3).deterministic_in_training
    assert nv.layers.Activation("relu").deterministic_in_training
    assert not nv.layers.Activation("rrelu").deterministic_in_training
    assert not nv.layers.Dense(3, activation="rrelu").deterministic_in_training
