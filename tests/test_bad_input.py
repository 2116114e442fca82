"""Bad input raises a clear exception and changes nothing."""
import numpy as np
import pytest

import nerve as nv


@pytest.fixture
def model():
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.Dense(3)], input_dim=4)
    m.compile(optimizer=nv.optimizers.Adam(lr=0.1), loss="cross_entropy", metrics=["accuracy"])
    return m


def snapshot(m):
    return [p.value.copy() for p in m.parameters()] + [m.optimizer._core.slot(i).copy()
                                                       for i in range(len(m.optimizer._core.slot_names))]


def unchanged(m, snap):
    now = snapshot(m)
    return len(now) == len(snap) and all(np.array_equal(a, b) for a, b in zip(now, snap))


X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
Y = np.arange(10) % 3


@pytest.mark.parametrize("x,y,match", [
    (X[:, :3], Y, "expects 4 features"),
    (X, Y[:9], r"expected shape \(10,\)"),
    (X, Y.reshape(5, 2), "expected shape"),
    (X, np.where(np.arange(10) == 4, 3, Y), r"label 3 at row 4 is outside \[0, 3\)"),
    (X, np.where(np.arange(10) == 2, -1, Y), "label -1 at row 2"),
    (X, Y.astype(np.float32), "integer"),
    (np.zeros((0, 4), np.float32), Y[:0], "empty"),
    (X.astype(str), Y, "numeric"),
    (X[0], Y[:1], "2-D"),
])
def test_train_step_rejects(model, x, y, match):
    model.train_step(X, Y)  # optimizer state exists
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        model.train_step(x, y)
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0)
    assert unchanged(model, snap)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_row(model, bad):
    x = X.copy()
    x[7, 2] = bad
    model.train_step(X, Y)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="NaN or Inf at row 7, column 2"):
        model.train_step(x, Y)
    with pytest.raises(ValueError, match="row 7"):
        model.fit(x, Y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="row 7"):
        model.predict(x)
    assert unchanged(model, snap)


def test_fit_checks_every_batch_before_training(model):
    x = np.tile(X, (10, 1))
    y = np.tile(Y, 10)
    y[-1] = 5  # in the last batch only
    snap = [p.value.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="label 5 at row 99"):
        model.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    assert all(np.array_equal(a, p.value) for a, p in zip(snap, model.parameters()))


@pytest.mark.parametrize("where", ["x", "y"])
def test_fit_checks_the_whole_epoch_for_nan_before_training(where):
    # fit's C++ epoch loop checks x and a float target whole, once, and the
    # steps then skip their own per-batch checks: a NaN in the last row still
    # stops the epoch before the first update.
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.Dense(3)], input_dim=4)
    m.compile(optimizer="adam", loss="mse")
    r = np.random.default_rng(0)
    x = r.standard_normal((100, 4)).astype(np.float32)
    y = r.standard_normal((100, 3)).astype(np.float32)
    (x if where == "x" else y)[99, 1] = np.nan
    snap = [p.value.copy() for p in m.parameters()]
    with pytest.raises(ValueError, match="NaN or Inf at row 99"):
        m.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    assert all(np.array_equal(a, p.value) for a, p in zip(snap, m.parameters()))


def test_float64_input_is_converted(model):
    loss64 = model.evaluate(X.astype(np.float64), Y)["loss"]
    assert loss64 == model.evaluate(X, Y)["loss"]


@pytest.mark.parametrize("getter,name,hint", [
    (nv.activations.get, "relu7", "relu6"),
    (nv.activations.get, "sigmod", "sigmoid"),
    (nv.losses.get, "cross_entropie", "cross_entropy"),
    (nv.optimizers.get, "adamm", "adam"),
    (nv.initializers.get, "he_normall", "he_normal"),
])
def test_unknown_names_suggest(getter, name, hint):
    with pytest.raises(ValueError, match=f"did you mean.*{hint}"):
        getter(name)


def test_unknown_parameter_suggests():
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        nv.activations.get("elu", alpah=1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        nv.losses.get("mse", delta=1.0)


def test_compile_and_fit_arguments(model):
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(X, Y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        model.fit(X, Y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(X, Y, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="metric"):
        model.compile(loss="accuracy")
    fresh = nv.Sequential([nv.layers.Dense(3)], input_dim=4)
    with pytest.raises(RuntimeError, match="compile"):
        fresh.train_step(X, Y)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="units"):
        nv.layers.Dense(0)
    with pytest.raises(ValueError, match="input_dim"):
        nv.Sequential([nv.layers.Dense(3)], input_dim=0)
    with pytest.raises(ValueError):
        nv.Sequential(["dense"])


@pytest.mark.parametrize("make", [
    lambda p: nv.optimizers.SGD([p], lr=-1.0),
    lambda p: nv.optimizers.SGD([p], lr=0.1, nesterov=True),
    lambda p: nv.optimizers.Adam([p], betas=(1.0, 0.999)),
    lambda p: nv.optimizers.Adam([p], betas=(0.9, -0.1)),
    lambda p: nv.optimizers.Adam([p], lr=float("nan")),
    lambda p: nv.optimizers.Adam([p], eps=-1.0),
    lambda p: nv.optimizers.SGD([p], clipnorm=-1.0),
])
def test_bad_hyper_parameters(make):
    p = nv.Parameter(np.ones(3))
    with pytest.raises(ValueError):
        make(p)


def test_set_num_threads_validation():
    with pytest.raises(ValueError):
        nv.set_num_threads(0)
    with pytest.raises(TypeError):
        nv.set_num_threads(1.5)
