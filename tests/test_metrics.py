"""nv.metrics against numpy formulas written here (and scikit-learn's metrics
as a second oracle), Keras names as aliases, and metrics in compile/fit/evaluate/save."""
import io

import numpy as np
import pytest
from sklearn import metrics as skm

import nerve as nv
from conftest import rng


@pytest.fixture
def reg_data():
    r = rng(7)
    t = r.standard_normal((50, 3))
    p = t + 0.3 * r.standard_normal((50, 3))
    return p, t


def test_regression_metrics_match_numpy_and_sklearn(reg_data):
    p, t = reg_data
    assert nv.metrics.mae(p, t) == pytest.approx(np.abs(p - t).sum() / p.size, rel=1e-12)
    assert nv.metrics.mse(p, t) == pytest.approx(((p - t) ** 2).sum() / p.size, rel=1e-12)
    assert nv.metrics.rmse(p, t) == pytest.approx(np.sqrt(((p - t) ** 2).sum() / p.size), rel=1e-12)
    cols = [1 - ((t[:, j] - p[:, j]) ** 2).sum() / ((t[:, j] - t[:, j].mean()) ** 2).sum() for j in range(3)]
    assert nv.metrics.r2(p, t) == pytest.approx(np.mean(cols), rel=1e-12)
    assert nv.metrics.r2(p, t) == pytest.approx(skm.r2_score(t, p), rel=1e-12)
    assert nv.metrics.mae(p, t) == pytest.approx(skm.mean_absolute_error(t, p), rel=1e-12)
    # one output: (n,) targets against (n, 1) predictions
    assert nv.metrics.r2(p[:, :1], t[:, 0]) == pytest.approx(skm.r2_score(t[:, 0], p[:, 0]), rel=1e-12)
    # constant target: 1 when exact, 0 otherwise (scikit-learn's convention)
    assert nv.metrics.r2(np.ones(4), np.ones(4)) == 1.0 and nv.metrics.r2(np.zeros(4), np.ones(4)) == 0.0
    with pytest.raises(ValueError, match="like pred"):
        nv.metrics.mse(p, t[:, :2])


@pytest.mark.filterwarnings("ignore:.k. .7. greater")  # k >= classes on purpose: 1.0
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_top_k_accuracy_matches_numpy_and_sklearn(k):
    r = rng(k)
    scores = r.standard_normal((200, 6))
    labels = r.integers(0, 6, 200)
    order = np.argsort(-scores, axis=1)[:, :k]
    expect = np.mean([labels[i] in order[i] for i in range(200)])
    assert nv.metrics.top_k_accuracy(scores, labels, k=k) == pytest.approx(expect)
    assert nv.metrics.top_k_accuracy(scores, labels, k=k) == pytest.approx(
        skm.top_k_accuracy_score(labels, scores, k=k, labels=range(6)))
    onehot = np.eye(6)[labels]
    assert nv.metrics.top_k_accuracy(scores, onehot, k=k) == pytest.approx(expect)
    m = nv.metrics.get("top_k_accuracy", k=k)
    assert m.forward(scores, labels) == pytest.approx(expect)


def test_top_k_defaults_and_errors():
    assert nv.metrics.get("top_k_accuracy").params == {"k": 5}
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        nv.metrics.top_k_accuracy(np.zeros((3, 4)), np.zeros(3, np.int64), k=0)
    with pytest.raises(ValueError, match="outside"):
        nv.metrics.top_k_accuracy(np.zeros((3, 4)), np.array([0, 4, 1]))


@pytest.mark.parametrize("alias, canon", [("mean_absolute_error", "mae"), ("mean_squared_error", "mse"),
                                          ("root_mean_squared_error", "rmse"), ("r2_score", "r2"),
                                          ("sparse_top_k_categorical_accuracy", "top_k_accuracy"),
                                          ("categorical_accuracy", "accuracy"), ("acc", "accuracy")])
def test_keras_metric_names(alias, canon):
    assert nv.metrics.get(alias).name == canon


@pytest.mark.parametrize("alias, canon", [("categorical_crossentropy", "cross_entropy"),
                                          ("sparse_categorical_crossentropy", "cross_entropy"),
                                          ("binary_crossentropy", "binary_cross_entropy"),
                                          ("mean_squared_error", "mse"), ("mean_absolute_error", "mae"),
                                          ("huber_loss", "huber"), ("categorical_focal_crossentropy", "focal")])
def test_keras_loss_names(alias, canon):
    assert nv.losses.get(alias).name == canon


def test_unknown_names_suggest_and_metrics_are_not_losses():
    with pytest.raises(ValueError, match="did you mean 'mean_squared_error'") as e:
        nv.losses.get("mean_squared_eror")
    assert "accuracy" not in str(e.value) and "acc," not in str(e.value)
    with pytest.raises(ValueError, match="did you mean 'rmse'"):
        nv.metrics.get("rmsee")
    with pytest.raises(ValueError, match="is a metric"):
        nv.Sequential([nv.layers.Dense(2)]).compile(loss="accuracy")


def test_learning_rate_alias_in_every_optimizer():
    for name in ("sgd", "adam", "adamw", "nadam", "adamax", "rmsprop", "adagrad", "adadelta", "ftrl"):
        opt = nv.optimizers.get(name, learning_rate=0.037)
        assert opt.lr == pytest.approx(0.037), name
    with pytest.raises(ValueError, match="not both"):
        nv.optimizers.Adam(lr=0.1, learning_rate=0.2)


def test_label_column_message_points_to_ravel():
    with pytest.raises(ValueError, match=r"shape \(6,\) \(y.ravel\(\)\)"):
        nv.losses.get("cross_entropy").forward(np.zeros((6, 3)), np.zeros((6, 1), np.int64))


def test_metrics_in_compile_fit_evaluate_and_save():
    r = rng(1)
    x = r.standard_normal((64, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1).astype(np.float32)
    m = nv.Sequential([nv.layers.Dense(8, activation="tanh"), nv.layers.Dense(1)], input_dim=4)
    m.compile(nv.optimizers.Adam(learning_rate=1e-2), "mean_squared_error", metrics=["mae", "rmse", "r2"])
    h = m.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.25)
    for key in ("mae", "rmse", "r2", "val_mae", "val_rmse", "val_r2"):
        assert len(h.history[key]) == 3
    x_tr, y_tr = x[:48], y[:48]
    pred = m.predict(x_tr)[:, 0].astype(np.float64)
    assert h.history["mae"][-1] == pytest.approx(np.abs(pred - y_tr).mean(), rel=1e-6)
    ev = m.evaluate(x, y)
    p = m.predict(x)[:, 0].astype(np.float64)
    assert ev["r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-6)
    assert ev["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-6)
    c = nv.Sequential([nv.layers.Dense(5)], input_dim=4)
    c.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy", nv.metrics.get("top_k_accuracy", k=2)])
    buf = io.BytesIO()
    c.save(buf)
    buf.seek(0)
    loaded = nv.load_model(buf)
    assert [mm.get_config() for mm in loaded.metrics] == [{"name": "accuracy"}, {"name": "top_k_accuracy", "k": 2}]
