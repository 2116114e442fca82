"""nv.interop.from_keras / to_keras (Keras 3 on the torch backend; an
optional oracle like PyTorch: skipped when keras is not installed)."""
import os

import numpy as np
import pytest

import nerve as nv
from conftest import close_to_scale, rng

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
KL = keras.layers


def kpredict(km, x):
    return keras.ops.convert_to_numpy(km(x, training=False))


def randomized(km, seed=0):
    """Random weights everywhere, moving variances positive: statistics a
    trained model would have, without the cost of fitting in Keras."""
    r = rng(seed)
    for layer in km.layers:
        ws = layer.get_weights()
        layer.set_weights([(r.uniform(0.5, 1.5, w.shape) if "variance" in v.path else
                            r.uniform(-0.5, 0.5, w.shape)).astype(np.float32)
                           for w, v in zip(ws, layer.weights)])
    return km


def test_from_keras_with_moving_statistics():
    keras.utils.set_random_seed(0)
    x = rng(0).standard_normal((32, 5)).astype(np.float32)
    km = randomized(keras.Sequential([
        keras.Input((5,)), KL.Dense(8, activation="gelu"), KL.BatchNormalization(momentum=0.9),
        KL.Dropout(0.2), KL.Dense(8), KL.LeakyReLU(0.1), KL.PReLU(), KL.GaussianNoise(0.1),
        KL.Dense(6, activation="leaky_relu"), KL.ReLU(max_value=6), KL.Dense(8, use_bias=False), KL.ELU(0.5),
        KL.BatchNormalization(center=False), KL.Activation("hard_silu"), KL.Dense(3), KL.Softmax()]))
    model = nv.interop.from_keras(km)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Dense", "BatchNorm", "Dropout", "Dense", "PReLU", "GaussianNoise", "Dense",
                     "Activation", "Dense", "BatchNorm", "Activation", "Dense"]
    assert abs(model.layers[1].momentum - 0.1) < 1e-12  # Keras 0.9 = weight of the old value
    assert model.layers[1].eps == pytest.approx(1e-3)
    assert model.layers[6].activation.params == {"alpha": 0.2}  # Keras's string leaky_relu slope
    np.testing.assert_array_equal(model.layers[1].running_var,
                                  keras.ops.convert_to_numpy(km.layers[1].moving_variance))
    close_to_scale(model.predict(x), kpredict(km, x))


def test_to_keras_and_back():
    L = nv.layers
    nv.manual_seed(1)
    model = nv.Sequential([L.Dense(8, activation="elu"), L.BatchNorm(momentum=0.2), L.Dropout(0.1),
                           L.Dense(8, activation=nv.activations.get("gelu", approximate="tanh")),
                           L.PReLU(shared=False), L.Dense(8, activation="swish"), L.PReLU(),
                           L.Activation("leaky_relu", alpha=0.3), L.Dense(3, activation="log_softmax")], input_dim=4)
    x = rng(1).standard_normal((40, 4)).astype(np.float32)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros((40, 3), np.float32), epochs=2, verbose=0)
    km = nv.interop.to_keras(model)
    want = model.predict(x)
    close_to_scale(kpredict(km, x), want)
    assert km.layers[1].momentum == pytest.approx(0.8)
    back = nv.interop.from_keras(km)
    close_to_scale(back.predict(x), want)


def test_keras_refusals_name_the_layer():
    with pytest.raises(ValueError, match=r"Conv1D"):
        nv.interop.from_keras(keras.Sequential([keras.Input((4, 1)), KL.Conv1D(2, 2)]))
    with pytest.raises(ValueError, match="softsign"):
        nv.interop.from_keras(keras.Sequential([keras.Input((4,)), KL.Dense(2, activation="softsign")]))
    with pytest.raises(ValueError, match=r"layer 1 \(Maxout\)"):
        nv.interop.to_keras(nv.Sequential([nv.layers.Dense(3), nv.layers.Maxout(2)], input_dim=2))
    with pytest.raises(ValueError, match="crelu"):
        nv.interop.to_keras(nv.Sequential([nv.layers.Dense(3, activation="crelu")], input_dim=2))
