"""nerve.sklearn: scikit-learn's own estimator checks (every check runs; the
expected failures are scikit-learn's expected_failed_checks, each with its
reason in nerve/sklearn.py), then behaviour the checks do not cover: labels of
any type, predict_proba, class_weight and sample_weight, MLP's stopping rule,
pickle/joblib, Pipeline, GridSearchCV(n_jobs=2) threads, cross_val_score."""
import io
import pickle
import warnings

import numpy as np
import pytest

# scikit-learn and pandas (for scikit-learn's dataframe checks) come with the test extra.
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import nerve as nv  # noqa: E402
from nerve.sklearn import NerveClassifier, NerveRegressor, expected_failed_checks  # noqa: E402

# Short runs on purpose: MLP's "maximum iterations reached" warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Small networks and iteration caps keep the ~60 checks per configuration fast;
# 300 epochs is what the checks' score thresholds need on their tiny data sets.
_SMALL = dict(hidden_layer_sizes=(32,), max_iter=300)
CONFIGS = [
    NerveClassifier(**_SMALL),
    NerveRegressor(**_SMALL),
    NerveClassifier(**_SMALL, batch_norm=True, dropout=0.1),
    NerveClassifier(**_SMALL, early_stopping=True, solver="sgd", learning_rate_init=0.05, class_weight="balanced"),
    NerveRegressor(**_SMALL, optimizer="nadam", batch_norm=True, n_iter_no_change=5),
]


@parametrize_with_checks(CONFIGS, expected_failed_checks=expected_failed_checks)
def test_sklearn_check_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_every_expected_failure_has_a_reason():
    for est in CONFIGS:
        for name, reason in expected_failed_checks(est).items():
            assert name.startswith("check_") and len(reason) > 40


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(x), y


@pytest.mark.parametrize("labels", [np.array(["setosa", "versicolor", "virginica"]), np.array([10, -3, 7]),
                                    np.array([1.0, 2.0, 3.0])])
def test_any_label_type(iris, labels):
    x, y = iris
    yl = labels[y]
    clf = NerveClassifier(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01, random_state=0).fit(x, yl)
    assert list(clf.classes_) == sorted(labels.tolist())
    pred = clf.predict(x)
    assert pred.dtype == yl.dtype and set(pred) <= set(labels)
    assert clf.score(x, yl) > 0.9
    proba = clf.predict_proba(x)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], pred)


def test_binary_uses_one_logit_and_proba_is_its_sigmoid(iris):
    x, y = iris
    yb = np.where(y == 0, "no", "yes")
    clf = NerveClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(x, yb)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    z = clf.model_.predict(x.astype(np.float32))[:, 0].astype(np.float64)
    np.testing.assert_allclose(clf.predict_proba(x)[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(x), np.where(z > 0, "yes", "no"))


def test_same_random_state_same_model_and_global_seed_untouched(iris):
    x, y = iris
    nv.manual_seed(5)
    before = nv._random.next_key()
    a = NerveClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=3).fit(x, y)
    b = NerveClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=3).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert a.loss_curve_ == b.loss_curve_
    nv.manual_seed(5)
    assert nv._random.next_key() == before


def test_mlp_parameters_mean_what_they_mean(iris):
    x, y = iris
    clf = NerveClassifier(hidden_layer_sizes=(7, 5), activation="tanh", solver="sgd", momentum=0.5,
                          learning_rate_init=0.03, alpha=1e-3, batch_size=16, max_iter=4, random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        clf.fit(x, y)
    assert [c.shape for c in clf.coefs_] == [(4, 7), (7, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (5,), (3,)]
    assert clf.n_layers_ == 4 and clf.n_iter_ == 4 and len(clf.loss_curve_) == 4 and clf.t_ == 4 * 150
    opt = clf.model_.optimizer
    assert type(opt).__name__ == "SGD" and opt.lr == 0.03 and opt.get_config()["momentum"] == 0.5
    dense = clf.model_.layers[0]
    assert dense.activation.name == "tanh"
    # MLP's penalty 0.5 * alpha * ||W||^2 / batch_size is nerve's l2(alpha / (2 batch_size)).
    assert dense.kernel_regularizer.l2 == pytest.approx(1e-3 / 32)
    adam = NerveRegressor(beta_1=0.8, beta_2=0.99, epsilon=1e-6, max_iter=1).fit(x, y.astype(float))
    assert adam.model_.optimizer.get_config()["betas"] in ((0.8, 0.99), [0.8, 0.99])
    with pytest.raises(ValueError, match="lbfgs is not available"):
        NerveClassifier(solver="lbfgs").fit(x, y)


def test_tol_and_n_iter_no_change_stop_as_mlp(iris):
    x, y = iris
    from sklearn.neural_network import MLPClassifier

    # No epoch after the first improves the loss by tol=10: both stop at the same epoch (the oracle is MLP).
    kw = dict(hidden_layer_sizes=(8,), max_iter=500, tol=10.0, n_iter_no_change=3, random_state=0)
    clf = NerveClassifier(**kw).fit(x, y)
    assert clf.n_iter_ == MLPClassifier(**kw).fit(x, y).n_iter_ == 5
    kw.update(n_iter_no_change=2, early_stopping=True)
    es = NerveClassifier(**kw).fit(x, y)
    assert es.n_iter_ == MLPClassifier(**kw).fit(x, y).n_iter_ == 4 and len(es.validation_scores_) == 4
    assert es.best_validation_score_ == max(es.validation_scores_)


def test_class_weight_and_sample_weight(iris):
    x, y = iris
    kw = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0, shuffle=False)
    a = NerveClassifier(class_weight={0: 3.0, 2: 0.5}, **kw).fit(x, y)
    b = NerveClassifier(**kw).fit(x, y, sample_weight=np.select([y == 0, y == 2], [3.0, 0.5], 1.0))
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    c = NerveClassifier(**kw).fit(x, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    # Zero weight on a class: it still exists in classes_, and the model learns not to predict it.
    z = NerveClassifier(hidden_layer_sizes=(8,), max_iter=200, learning_rate_init=0.01, random_state=0,
                        class_weight={1: 0.0}).fit(x, y)
    assert 1 in z.classes_ and np.mean(z.predict(x) == 1) < 0.1
    with pytest.raises(ValueError, match="not in classes_"):
        NerveClassifier(class_weight={"x": 1.0}, max_iter=1).fit(x, y)


def test_partial_fit_and_warm_start(iris):
    x, y = iris
    clf = NerveClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(x[:10], y[:10])
    clf.partial_fit(x[:50], y[:50], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2] and clf.n_iter_ == 1
    for _ in range(30):
        clf.partial_fit(x, y)
    assert clf.n_iter_ == 31 and clf.score(x, y) > 0.8
    w = NerveClassifier(hidden_layer_sizes=(8,), max_iter=3, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w.fit(x, y)
        first = w.coefs_[0].copy()
        model = w.model_
        w.fit(x, y)
    assert w.model_ is model and w.n_iter_ == 6 and not np.array_equal(first, w.coefs_[0])


def test_multi_output_regression():
    x, y = make_regression(n_samples=120, n_features=5, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(0)
    reg = NerveRegressor(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x, y)
    assert reg.predict(x).shape == (120, 2) and reg.score(x, y) > 0.9
    r1 = NerveRegressor(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert r1.fit(x, y[:, 0]).predict(x).shape == (120,)


def test_pickle_and_joblib_roundtrip_fitted_pipeline(iris, tmp_path):
    import joblib

    x, y = iris
    labels = np.array(["a", "b", "c"])[y]
    pipe = make_pipeline(StandardScaler(), NerveClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0,
                                                           batch_norm=True, dropout=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(x, labels)
    expect = pipe.predict_proba(x)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict_proba(x), expect)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    loaded = joblib.load(tmp_path / "pipe.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(x), expect)
    np.testing.assert_array_equal(loaded.predict(x), pipe.predict(x))


def test_cross_val_score_and_grid_search_with_two_jobs(iris):
    x, y = iris
    est = NerveClassifier(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(est, x, y, cv=3)
        assert scores.shape == (3,) and scores.mean() > 0.8
        grid = GridSearchCV(est, {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(8,), (16,)]}, cv=2, n_jobs=2)
        grid.fit(x, y)
        assert set(grid.best_params_) == {"alpha", "hidden_layer_sizes"} and grid.best_score_ > 0.7
        # In joblib's worker processes, nerve uses OMP_NUM_THREADS, which joblib sets to cores // n_jobs.
        import os
        out = cross_validate(est, x, y, cv=2, n_jobs=2, return_estimator=True)
    per_job = max(1, (os.cpu_count() or 1) // 2)
    assert [e.n_threads_ for e in out["estimator"]] == [per_job, per_job]


def test_threads_parameter_is_scoped_to_the_fit(iris):
    x, y = iris
    before = nv.get_num_threads()
    clf = NerveClassifier(hidden_layer_sizes=(8,), max_iter=2, threads=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    assert clf.n_threads_ == 1 and nv.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        NerveClassifier(threads=0).fit(x, y)


def test_compare_script_runs_and_prints_a_markdown_row():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "sklearn_compare.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "1", "--markdown", "--only", "iris"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = [ln for ln in out.stdout.splitlines() if ln.startswith("| iris")]
    assert len(row) == 1 and "test accuracy" in row[0] and row[0].count("|") == 8
