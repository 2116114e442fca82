"""No silent misuse: backward only after a training forward and never from a
caller's array, an optimizer belongs to one model, model.layers is fixed
once built, and values beyond float32 are refused (docs/reliability.md)."""
import gc

import numpy as np
import pytest

import nerve as nv


def model(seed=0):
    nv.manual_seed(seed)
    m = nv.Sequential([nv.layers.Dense(6, activation="tanh"), nv.layers.Dense(3)], input_dim=4)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy")
    return m


def batch(n=5, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 4)).astype(np.float32), r.integers(0, 3, n)


# -- backward ------------------------------------------------------------------
def grads_of(m, x, y, mutate=None):
    lf = nv.losses.get("cross_entropy")
    for p in m.parameters():
        p.grad[...] = 0
    out = m.forward(x, training=True)
    if mutate is not None:
        mutate(x)
    dx = m.backward(lf.backward(out, y), return_input_grad=True)
    return [p.grad.copy() for p in m.parameters()] + [dx]


def test_backward_uses_the_forward_input_not_the_callers_array():
    x, y = batch()
    want = grads_of(model(), x.copy(), y)

    def clobber(a):
        a[...] = 1e3  # the caller reuses its buffer before backward

    got = grads_of(model(), x.copy(), y, mutate=clobber)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_backward_after_the_input_array_is_freed():
    m, ref = model(), model()
    x, y = batch()
    want = grads_of(ref, x.copy(), y)
    lf = nv.losses.get("cross_entropy")
    for p in m.parameters():
        p.grad[...] = 0
    tmp = x.copy()
    out = m.forward(tmp, training=True)
    del tmp
    gc.collect()
    junk = [np.full((5, 4), 7.0, np.float32) for _ in range(50)]  # reuse the freed memory
    dx = m.backward(lf.backward(out, y), return_input_grad=True)
    del junk
    for a, b in zip(want, [p.grad.copy() for p in m.parameters()] + [dx]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("between", ["predict", "train_step", "eval_forward", "evaluate", "fit"])
def test_backward_refuses_when_the_last_forward_was_not_a_training_forward(between):
    # Before: backward after predict/train_step read the freed input of that
    # call (a raw pointer) and the overwritten activations: a wrong gradient.
    m = model()
    x, y = batch()
    out = m.forward(x, training=True)
    calls = {"predict": lambda: m.predict(x[:2]),
             "train_step": lambda: m.train_step(x[:3], y[:3]),
             "eval_forward": lambda: m.forward(x, training=False),
             "evaluate": lambda: m.evaluate(x, y),
             "fit": lambda: m.fit(x, y, epochs=1, batch_size=2, verbose=0)}
    calls[between]()
    with pytest.raises(RuntimeError, match="not a training forward"):
        m.backward(nv.losses.get("cross_entropy").backward(out, y))


def test_backward_before_any_forward_raises():
    with pytest.raises(RuntimeError, match="training forward"):
        model().backward(np.zeros((5, 3), np.float32))


def test_layer_backward_uses_a_copy_of_its_input():
    nv.manual_seed(0)
    a, b = nv.layers.Dense(3, activation="tanh"), nv.layers.Dense(3, activation="tanh")
    x, _ = batch()
    a.forward(x.copy())
    b.build(4)
    b._bind(nv._core.Arena(b.param_size()), 0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.value = pa.value
    xb = x.copy()
    b.forward(xb)
    xb[...] = -5.0
    dy = np.ones((5, 3), np.float32)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    np.testing.assert_array_equal(a.kernel.grad, b.kernel.grad)


# -- optimizer ownership -----------------------------------------------------------
def test_one_optimizer_cannot_be_compiled_into_two_models():
    # Before: the second compile rebound it and the first model silently stopped updating.
    opt = nv.optimizers.Adam(lr=1e-2)
    a = nv.Sequential([nv.layers.Dense(3)], input_dim=4).compile(optimizer=opt, loss="mse")
    b = nv.Sequential([nv.layers.Dense(3)], input_dim=4)
    with pytest.raises(ValueError, match="already compiled into another model"):
        b.compile(optimizer=opt, loss="mse")
    a.compile(optimizer=opt, loss="mae")  # recompiling its own model is fine
    before = a.layers[0].kernel.value.copy()
    x, _ = batch()
    a.train_step(x, np.zeros((5, 3), np.float32))
    assert not np.array_equal(before, a.layers[0].kernel.value)


def test_optimizer_is_free_again_once_its_model_is_gone():
    opt = nv.optimizers.SGD(lr=0.1)
    a = nv.Sequential([nv.layers.Dense(3)], input_dim=4).compile(optimizer=opt, loss="mse")
    del a
    gc.collect()
    nv.Sequential([nv.layers.Dense(3)], input_dim=4).compile(optimizer=opt, loss="mse")


# -- model.layers ------------------------------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda m: m.layers.append(nv.layers.Dense(2)),
    lambda m: m.layers.pop(),
    lambda m: m.layers.__setitem__(0, nv.layers.Dense(6)),
    lambda m: m.layers.__delitem__(0),
    lambda m: m.layers.insert(0, nv.layers.Dense(4)),
    lambda m: m.layers.clear(),
    lambda m: m.layers.reverse(),
    lambda m: m.layers.extend([nv.layers.Dense(2)]),
    lambda m: m.layers.__iadd__([nv.layers.Dense(2)]),
    lambda m: setattr(m, "layers", [nv.layers.Dense(3)]),
])
def test_layers_cannot_change_after_build(edit, tmp_path):
    # Before: accepted and ignored; save then wrote a model of another shape.
    m = model()
    with pytest.raises(ValueError, match="cannot be changed after the model is built"):
        edit(m)
    assert len(m.layers) == 2
    m.save(tmp_path / "m.nerve")
    x, _ = batch()
    np.testing.assert_array_equal(nv.load_model(tmp_path / "m.nerve").predict(x), m.predict(x))


def test_layers_can_change_before_build():
    m = nv.Sequential([nv.layers.Dense(3)])
    m.layers.append(nv.layers.Dense(2))
    m.layers = [nv.layers.Dense(5), nv.layers.Dense(2)]
    m.build(4)
    assert m.output_dim == 2 and isinstance(m.layers, list) and m.layers[0].output_dim == 5


# -- float32 range ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1e300, -1e39, np.inf, np.nan])
def test_values_beyond_float32_are_refused(bad):
    # Before: 1e300 was stored as inf, and p.value = nan was not checked at all.
    m = model()
    w = m.get_weights()
    w[0] = w[0].astype(np.float64)
    w[0][0, 0] = bad
    with pytest.raises(ValueError, match="float32 range|NaN or Inf"):
        m.set_weights(w)
    p = m.parameters()[0]
    before = p.value.copy()
    with pytest.raises(ValueError, match="float32 range|NaN or Inf"):
        p.value = np.full(p.shape, bad)
    np.testing.assert_array_equal(p.value, before)
    with pytest.raises(ValueError, match="float32 range|NaN or Inf"):
        nv.Parameter(np.array([1.0, bad]))


def test_values_at_the_float32_limit_are_kept():
    big = float(np.finfo(np.float32).max)
    p = nv.Parameter(np.array([big, -big]))
    p.value = np.array([big, 1.0])
    np.testing.assert_array_equal(p.value, np.array([big, 1.0], np.float32))
