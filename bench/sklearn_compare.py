"""NerveClassifier / NerveRegressor against scikit-learn's MLPClassifier /
MLPRegressor on scikit-learn's bundled data sets: test score and fit time.

Same settings on both sides (MLP's defaults: hidden_layer_sizes=(100,), relu,
adam, lr 1e-3, batch min(200, n), alpha 1e-4, max_iter=200, tol 1e-4,
n_iter_no_change=10), StandardScaler in a Pipeline, a 75/25 split
(stratified for classification), one thread each (nerve threads=1; numpy's
BLAS limited to 1 thread through threadpoolctl when it is installed).
Fit times are medians over --repeats fits, the two estimators interleaved in
one process; the ratio column is the median of the per-round ratios.

    python bench/sklearn_compare.py [--repeats 5] [--markdown] [--only iris wine]
"""
import argparse
import statistics
import sys
import time
import warnings

import numpy as np


def _datasets():
    from sklearn import datasets as d

    return [
        ("iris", "classification", d.load_iris(return_X_y=True)),
        ("wine", "classification", d.load_wine(return_X_y=True)),
        ("breast_cancer", "classification", d.load_breast_cancer(return_X_y=True)),
        ("digits", "classification", d.load_digits(return_X_y=True)),
        ("diabetes", "regression", d.load_diabetes(return_X_y=True)),
        ("linnerud", "regression", d.load_linnerud(return_X_y=True)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fits per estimator and data set (default 5)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--only", nargs="*", default=None, help="data set names to run (default: all)")
    args = parser.parse_args(argv)

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import nerve as nv
    from nerve.sklearn import NerveClassifier, NerveRegressor

    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1)
    except ImportError:  # pragma: no cover
        limits = None
    warnings.simplefilter("ignore", ConvergenceWarning)
    common = dict(hidden_layer_sizes=(100,), max_iter=200, random_state=0)
    rows = []
    for name, task, (x, y) in _datasets():
        if args.only and name not in args.only:
            continue
        cls = task == "classification"
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0,
                                                  stratify=y if cls else None)
        if not cls:
            # Targets standardized with the training rows' statistics on both sides
            # (diabetes' target is ~150: unscaled, both MLPs spend their epochs reaching it).
            mu, sd = y_tr.mean(axis=0), y_tr.std(axis=0)
            y_tr, y_te = (y_tr - mu) / sd, (y_te - mu) / sd
        make = {"nerve": lambda: make_pipeline(StandardScaler(), (NerveClassifier if cls else NerveRegressor)(
                    threads=1, **common)),
                "sklearn": lambda: make_pipeline(StandardScaler(), (MLPClassifier if cls else MLPRegressor)(**common))}
        times = {k: [] for k in make}
        result = {}
        for _ in range(args.repeats):
            for k in ("nerve", "sklearn"):
                est = make[k]()
                t0 = time.perf_counter()
                est.fit(x_tr, y_tr)
                times[k].append(time.perf_counter() - t0)
                result[k] = (est.score(x_te, y_te), est[-1].n_iter_)
        ratio = statistics.median(s / n for s, n in zip(times["sklearn"], times["nerve"]))
        rows.append((name, task, x.shape, result, {k: statistics.median(v) for k, v in times.items()}, ratio))
    metric = {"classification": "accuracy", "regression": "R²"}
    if args.markdown:
        print("| data set (rows × features) | score | NerveClassifier/Regressor | MLPClassifier/Regressor "
              "| fit time nerve | fit time sklearn | sklearn / nerve time |")
        print("|---|---|---|---|---|---|---|")
        for name, task, shape, res, t, ratio in rows:
            print(f"| {name} ({shape[0]} × {shape[1]}) | test {metric[task]} | {res['nerve'][0]:.3f} "
                  f"({res['nerve'][1]} epochs) | {res['sklearn'][0]:.3f} ({res['sklearn'][1]} epochs) | "
                  f"{t['nerve'] * 1e3:.0f} ms | {t['sklearn'] * 1e3:.0f} ms | {ratio:.1f}x |")
    else:
        for name, task, shape, res, t, ratio in rows:
            print(f"{name:14s} {metric[task]:8s} nerve {res['nerve'][0]:.3f} ({res['nerve'][1]:3d} ep, "
                  f"{t['nerve'] * 1e3:7.1f} ms)  sklearn {res['sklearn'][0]:.3f} ({res['sklearn'][1]:3d} ep, "
                  f"{t['sklearn'] * 1e3:7.1f} ms)  ratio {ratio:.2f}")
    print(f"nerve {nv.__version__}, threads 1, repeats {args.repeats}, "
          f"BLAS limited to 1 thread: {limits is not None}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
