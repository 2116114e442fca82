"""Models pickle and deep-copy through the model file; save/load_model take
binary file objects; predict_proba; a probability output feeding a logits loss is refused."""
import copy
import io
import pickle

import numpy as np
import pytest

import nerve as nv
from conftest import rng


def _trained(loss="cross_entropy", out=3, **kw):
    r = rng(2)
    x = r.standard_normal((40, 5)).astype(np.float32)
    y = r.integers(0, out, 40) if loss in ("cross_entropy", "focal") else (r.random((40, out)) > 0.5).astype(np.float32)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.BatchNorm(), nv.layers.Dropout(0.2),
                       nv.layers.Dense(out)], input_dim=5)
    m.compile(nv.optimizers.Adam(lr=1e-2), loss, metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=0)
    return m, x, y


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_roundtrip_keeps_predictions_and_training_trajectory(how):
    m, x, y = _trained()
    c = pickle.loads(pickle.dumps(m)) if how == "pickle" else copy.deepcopy(m)
    np.testing.assert_array_equal(c.predict(x), m.predict(x))
    assert c.layers[0] is not m.layers[0]
    # The copy continues exactly as the original (optimizer state, step, streams).
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=3)
    c.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=3)
    np.testing.assert_array_equal(c.predict(x), m.predict(x))


def test_pickle_payload_is_the_model_file():
    m, x, _ = _trained()
    fn, (payload,) = m.__reduce__()
    assert isinstance(payload, bytes) and payload[:2] == b"PK"   # the zip, no pickled objects inside
    np.testing.assert_array_equal(nv.load_model(io.BytesIO(payload)).predict(x), m.predict(x))


def test_unbuilt_model_pickles_with_compile_settings():
    m = nv.Sequential([nv.layers.Dense(4, activation="tanh"), nv.layers.Dense(2)])
    m.compile(nv.optimizers.SGD(lr=0.05, momentum=0.9), "mse")
    c = pickle.loads(pickle.dumps(m))
    assert not c.built and c.optimizer.lr == 0.05 and c.loss.name == "mse"
    assert [l.units for l in c.layers] == [4, 2]


def test_save_and_load_binary_file_objects(tmp_path):
    m, x, _ = _trained()
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    np.testing.assert_array_equal(nv.load_model(buf).predict(x), m.predict(x))
    with open(tmp_path / "m.nerve", "wb") as f:
        m.save(f)
    with open(tmp_path / "m.nerve", "rb") as f:
        np.testing.assert_array_equal(nv.load_model(f).predict(x), m.predict(x))
    with pytest.raises(ValueError, match="binary file object"):
        m.save(io.StringIO())
    with pytest.raises(ValueError, match="not a nerve model file"):
        nv.load_model(io.BytesIO(b"not a zip"))


def test_predict_proba_softmax_and_sigmoid():
    m, x, _ = _trained()
    z = m.predict(x).astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = m.predict_proba(x)
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    b, xb, _ = _trained("binary_cross_entropy_with_logits", out=1)
    np.testing.assert_allclose(b.predict_proba(xb), 1 / (1 + np.exp(-b.predict(xb).astype(np.float64))),
                               rtol=1e-5, atol=1e-7)
    r, xr, _ = _trained("mse", out=2)
    with pytest.raises(ValueError, match="classification loss"):
        r.predict_proba(xr)


@pytest.mark.parametrize("act, loss, fix", [("softmax", "cross_entropy", "drop the activation"),
                                            ("softmax", "focal", "predict_proba"),
                                            ("sigmoid", "binary_cross_entropy_with_logits",
                                             "loss='binary_cross_entropy'")])
def test_probability_output_with_logits_loss_refused(act, loss, fix):
    m = nv.Sequential([nv.layers.Dense(4), nv.layers.Dense(3 if act == "softmax" else 1, activation=act)])
    with pytest.raises(ValueError, match=fix):
        m.compile("adam", loss)
    m2 = nv.Sequential([nv.layers.Dense(4), nv.layers.Activation(act)])
    with pytest.raises(ValueError, match="applied twice"):
        m2.compile("adam", loss)
    # A probability loss after a sigmoid output is fine, and so is a softmax hidden layer.
    nv.Sequential([nv.layers.Dense(1, activation="sigmoid")]).compile("adam", "binary_cross_entropy")
    nv.Sequential([nv.layers.Dense(4, activation="softmax"), nv.layers.Dense(3)]).compile("adam", "cross_entropy")
