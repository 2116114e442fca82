"""A hyper-parameter search spread over a Dask cluster through joblib's Dask
backend (docs/distributed.md, "Hyper-parameter search on a cluster"): the
nerve.sklearn estimators pickle through the model file, so GridSearchCV ships
them to the workers like any scikit-learn estimator. A LocalCluster of two
worker processes stands in for the cluster; CI installs dask[distributed]
(the test extra)."""
import distributed
import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nerve.sklearn import NerveClassifier

pytestmark = pytest.mark.filterwarnings("ignore", category=ConvergenceWarning)  # short fits on purpose


def test_grid_search_on_a_dask_cluster():
    x, y = load_iris(return_X_y=True)
    grid = {"nerveclassifier__alpha": [1e-4, 1e-1]}

    def search():
        est = make_pipeline(StandardScaler(), NerveClassifier(max_iter=30, random_state=0, threads=1))
        return GridSearchCV(est, grid, cv=2, n_jobs=-1)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream, parallel_backend("dask"):
            on_dask = search().fit(x, y)
        workers = {t["worker"] for t in stream.data}
    local = search().fit(x, y)  # the same search in this process, the oracle
    # 2 candidates x 2 folds ran as tasks, on both workers.
    assert len(stream.data) >= 4 and len(workers) == 2, (len(stream.data), workers)
    # Each fit is seeded (random_state), so where it ran changes nothing.
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert on_dask.best_params_ == local.best_params_
    assert on_dask.best_score_ > 0.7
    np.testing.assert_array_equal(on_dask.predict(x), local.predict(x))
