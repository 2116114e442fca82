"""The ``nerve`` command: ``nerve train``, ``nerve predict``, ``nerve info``, ``nerve bench``.

Every value is checked before anything is printed or trained; a bad value
exits with status 2 and a message naming the flag. Positions in data errors
are 0-based rows and columns (as numpy and ``fit`` count), plus the 1-based
file line for text files.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

# Per-dataset defaults: the settings the README quotes for its accuracy figures.
_DEFAULTS = {
    "digits": {"layers": "256,128", "epochs": 40, "batch_size": 32, "lr": 1e-3},
    "fashion-mnist": {"layers": "300,100", "epochs": 15, "batch_size": 64, "lr": 1e-3},
    "file": {"layers": "128,64", "epochs": 20, "batch_size": 32, "lr": 1e-3},
}

_TASK_RULE = ("auto: regression when the labels are numbers and (stored as floats in an .npz, or some value "
              "is not a whole number, or there are more than 50 distinct values); otherwise classification "
              "(labels that are not numbers are always class names)")


def _int_at_least(lo, what):
    """An argparse type: an integer >= lo, refused with a message naming `what`."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "an integer >= 0")


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _fraction(text):
    v = _positive_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return v


def _layers(text):
    parts = [p.strip() for p in text.split(",")]
    try:
        units = [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 300,100; "
                                         f"{bad!r} is not an integer") from None
    if not units or any(u < 1 for u in units):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return units


def _name_in(kind, getter):
    def check(text):
        try:
            getter(text)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    check.__name__ = kind
    return check


def _load(args):
    """(kind, x_tr, y_tr, x_te, y_te, info) for --dataset."""
    from . import datasets

    seed, test_size = args.seed, args.test_size
    if args.dataset == "digits":
        x, y = datasets.load_digits()
        x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=test_size, seed=seed)
        return "digits", x_tr, y_tr, x_te, y_te, {"task": "classification"}
    if args.dataset in ("fashion-mnist", "fashion_mnist"):
        (x_tr, y_tr), (x_te, y_te) = datasets.load_fashion_mnist()
        return "fashion-mnist", x_tr, y_tr, x_te, y_te, {"task": "classification"}
    x, y, info = datasets.load_table(args.dataset, task=args.task, delimiter=_delimiter(args.delimiter),
                                     index_column={"auto": "auto", "drop": True, "keep": False}[args.index_column])
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=test_size, seed=seed)
    # Features scaled with the training rows' statistics; kept in the model file for `nerve predict`.
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0
    info["feature_mean"], info["feature_std"] = mean.tolist(), std.tolist()
    x_tr, x_te = datasets.standardize(x_tr, x_te)
    return "file", x_tr, y_tr, x_te, y_te, info


def _delimiter(text):
    return {"auto": "auto", "tab": "\t", "whitespace": None}.get(text, text)


def train(args):
    import nerve as nv

    if args.dataset not in ("digits", "fashion-mnist", "fashion_mnist") and not os.path.exists(args.dataset):
        raise FileNotFoundError(f"unknown dataset {args.dataset!r}: digits, fashion-mnist, or the path of a "
                                f".csv/.tsv/.txt/.npz file (no such file)")
    if args.save:
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--save {args.save}: the folder {folder} does not exist")
    nv.manual_seed(args.seed)
    nvd, rank, ranks = None, 0, 1
    if args.distributed:
        # One process per rank (mpirun / srun): every rank loads the data with
        # the same seed, trains on its block of the training rows and tests on
        # its block of the test rows; rank 0 prints and saves.
        import nerve.distributed as nvd

        nvd.init(threads=args.threads or "auto")
        rank, ranks = nvd.rank(), nvd.world_size()
    elif args.threads:
        nv.set_num_threads(args.threads)
    kind, x_tr, y_tr, x_te, y_te, info = _load(args)
    n_train, n_test = x_tr.shape[0], x_te.shape[0]
    out = print if rank == 0 else (lambda *a, **k: None)
    task = info["task"]
    if kind != "file" and args.task == "regression":
        raise ValueError(f"--task regression: {kind} is a classification data set")
    defaults = _DEFAULTS[kind]
    layers = args.layers or [int(u) for u in defaults["layers"].split(",")]
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    batch_size = args.batch_size or defaults["batch_size"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    classification = task == "classification"
    if classification:
        names = info.get("class_names")
        out_dim = len(names) if names is not None else int(max(y_tr.max(), y_te.max()) + 1)
    else:
        out_dim = 1 if y_tr.ndim == 1 else y_tr.shape[1]
    init = "he_normal" if args.activation in ("relu", "leaky_relu", "elu", "gelu", "swish", "silu") else "glorot_uniform"
    model = nv.Sequential(
        [nv.layers.Dense(u, activation=args.activation, kernel_initializer=init) for u in layers]
        + [nv.layers.Dense(out_dim)],
        input_dim=x_tr.shape[1],
    )
    optimizer = nv.optimizers.get(args.optimizer, lr=lr)
    model.compile(optimizer=optimizer, loss="cross_entropy" if classification else "mse",
                  metrics=["accuracy"] if classification else ["mae", "r2"])
    model.metadata = {"task": task, **{k: info[k] for k in ("class_names", "feature_mean", "feature_std",
                                                            "index_column_dropped") if k in info}}
    y_fit = y_tr
    if not classification:
        # The target is standardized for training too (a target of ~150 with lr 1e-3
        # would spend most epochs just reaching its scale); predictions are scaled
        # back, and the test figures are in the target's own units.
        y_mean, y_std = y_tr.mean(axis=0), y_tr.std(axis=0)
        y_std = np.where(y_std == 0, 1.0, y_std)
        model.metadata["target_mean"] = np.atleast_1d(y_mean).tolist()
        model.metadata["target_std"] = np.atleast_1d(y_std).tolist()
        y_fit = ((y_tr - y_mean) / y_std).astype(np.float32)
    if kind == "file":
        model.metadata["delimiter"] = info.get("delimiter")
        model.metadata["header"] = info.get("header")
    name = kind if kind != "file" else args.dataset
    where = f", {ranks} ranks x batch {batch_size} per rank" if nvd else ""
    out(f"nerve {nv.__version__}: {name} ({task}) — {x_tr.shape[0]} train / {x_te.shape[0]} test rows, "
        f"{x_tr.shape[1]} features, {out_dim} {'classes' if classification else 'outputs'}; layers {layers} "
        f"({args.activation}), {type(optimizer).__name__} lr={lr}, batch {batch_size}, {epochs} epochs, "
        f"{nv.get_num_threads()} threads{where}")
    if nvd:
        x_tr, y_fit = nvd.shard(x_tr, y_fit)
        if classification:  # regression's R² is not a mean over shards: every rank tests on all rows
            x_te, y_te = nvd.shard(x_te, y_te)
        nvd.barrier()
    t0 = time.perf_counter()
    backup = nv.callbacks.BackupAndRestore(args.backup_dir) if args.backup_dir else None
    model.fit(x_tr, y_fit, epochs=epochs, batch_size=batch_size, verbose=1, seed=args.seed,
              distributed=bool(nvd), callbacks=[backup] if backup else None)
    if backup is not None and backup.restored_epoch is not None:
        out(f"resumed from the backup in {args.backup_dir} at epoch {backup.restored_epoch + 1}")
    seconds = time.perf_counter() - t0
    if classification:
        result = nvd.evaluate(model, x_te, y_te) if nvd else model.evaluate(x_te, y_te)
    else:
        pred = _unscale(model, model.predict(x_te))
        result = {"loss": nv.metrics.mse(pred, y_te), "r2": nv.metrics.r2(pred, y_te),
                  "mae": nv.metrics.mae(pred, y_te)}
    summary = {
        "dataset": name,
        "task": task,
        "test_loss": round(float(result["loss"]), 6),
        "epochs": epochs,
        "train_seconds": round(seconds, 3),
        "samples_per_sec": round(epochs * n_train / seconds, 1) if seconds > 0 else None,
        "train_rows": int(n_train),
        "test_rows": int(n_test),
        "layers": layers,
        "activation": args.activation,
        "optimizer": type(optimizer).__name__,
        "lr": lr,
        "batch_size": batch_size,
        "threads": nv.get_num_threads(),
        "seed": args.seed,
    }
    if classification:
        summary["test_accuracy"] = round(float(result["accuracy"]), 4)
    else:
        summary["test_r2"] = round(float(result["r2"]), 4)
        summary["test_mae"] = round(float(result["mae"]), 6)
    if nvd:
        summary["ranks"] = ranks
    if args.save:
        if rank == 0:
            model.save(args.save)
        summary["saved"] = args.save
    if rank != 0:
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        score = (f"test accuracy {summary['test_accuracy']:.4f}" if classification
                 else f"test R² {summary['test_r2']:.4f}, test MAE {summary['test_mae']:.4g}")
        print(f"done: {score}, test loss {summary['test_loss']:.4f}, {seconds:.1f}s, "
              f"{summary['samples_per_sec']:,.0f} samples/s")
    return 0


def _unscale(model, out):
    meta = model.metadata or {}
    if "target_mean" in meta:
        return out.astype(np.float64) * np.asarray(meta["target_std"]) + np.asarray(meta["target_mean"])
    return out.astype(np.float64)


def predict(args):
    import nerve as nv
    from . import datasets

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"model file {args.model} does not exist")
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"data file {args.data} does not exist")
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--out {args.out}: the folder {folder} does not exist")
    model = nv.load_model(args.model)
    meta = model.metadata or {}
    task = meta.get("task", "classification" if model.loss is not None and model.loss.name == "cross_entropy"
                    else "regression")
    if args.data.endswith(".npz"):
        with np.load(args.data, allow_pickle=False) as f:
            if "x" not in f.files:
                raise ValueError(f"{args.data}: an NPZ file for predict needs an array named 'x', found {f.files}")
            x = np.asarray(f["x"], dtype=np.float64).reshape(len(f["x"]), -1)
    else:
        index = {"auto": bool(meta.get("index_column_dropped", False)) or "auto", "drop": True,
                 "keep": False}[args.index_column]
        rows, _, _ = datasets.read_table(args.data, _delimiter(args.delimiter), "auto", index)
        width = len(rows[0][1])
        n_in = model.input_dim
        if width not in (n_in, n_in + 1):
            raise ValueError(f"{args.data}: {width} columns per row; the model takes {n_in} features "
                             f"(a last label column may follow and is ignored)")
        x = np.empty((len(rows), n_in), np.float64)
        for r, (no, fields) in enumerate(rows):
            for c in range(n_in):
                v = datasets._number(fields[c])
                if v is None:
                    raise ValueError(f"{args.data}: line {no} (row {r}, column {c}): {fields[c]!r} is not a number")
                x[r, c] = v
    if x.shape[1] != model.input_dim:
        raise ValueError(f"{args.data}: {x.shape[1]} features per row, the model takes {model.input_dim}")
    if "feature_mean" in meta:
        x = (x - np.asarray(meta["feature_mean"])) / np.asarray(meta["feature_std"])
    out = model.predict(x.astype(np.float32))
    if task == "classification":
        names = meta.get("class_names")
        idx = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0).astype(int)
        lines = [str(names[i]) if names is not None else str(int(i)) for i in idx]
    else:
        lines = [",".join(f"{v:.7g}" for v in row) for row in _unscale(model, out)]
    text = "prediction\n" + "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {len(lines)} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def info(args):
    import nerve as nv

    for k, v in nv.build_info().items():
        print(f"{k}: {', '.join(v) if isinstance(v, list) else v}")
    return 0


def bench(args):
    from . import benchmark

    return benchmark.main(["--against", args.against] if args.against else [])


def _parser():
    import nerve as nv

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="nerve", formatter_class=fmt,
        description="Fast feed-forward network training on the CPU. `nerve train` trains an MLP on the "
                    "digits (the main job); `nerve COMMAND --help` for each command's flags.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser(
        "train", formatter_class=fmt, help="train an MLP on a dataset and report its test score",
        description="Train an MLP and report its test score. Defaults by data set: digits 256,128 layers, "
                    "40 epochs, batch 32; fashion-mnist 300,100, 15 epochs, batch 64; your own file 128,64, "
                    "20 epochs, batch 32; Adam lr 1e-3 everywhere. Files: .csv/.tsv/.txt (delimiter and "
                    "header sniffed, the last column is the label, class names may be strings) or .npz "
                    "(arrays x and y); features are standardized with the training rows' statistics. "
                    "Classification trains with cross_entropy and reports accuracy; regression trains with "
                    "MSE on the standardized target and reports test R², MAE and MSE (test_loss) in the "
                    "target's units. " + _TASK_RULE + ".")
    t.add_argument("--dataset", default="digits", help="digits, fashion-mnist, or PATH.csv|.tsv|.txt|.npz")
    t.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="what to learn from the label column; " + _TASK_RULE)
    t.add_argument("--layers", type=_layers, default=None,
                   help="hidden layer widths, comma-separated (default: 256,128 digits; 300,100 fashion-mnist; "
                        "128,64 files)")
    t.add_argument("--activation", default="relu", type=_name_in("activation", nv.activations.get),
                   help="hidden-layer activation (any nv.activations name)")
    t.add_argument("--optimizer", default="adam", type=_name_in("optimizer", nv.optimizers.get),
                   help="any nv.optimizers name: sgd, adam, adamw, nadam, rmsprop, ...")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: 1e-3)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="passes over the training rows (default: 40 digits, 15 fashion-mnist, 20 files)")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help="rows per step (default: 32; 64 for fashion-mnist)")
    t.add_argument("--test-size", type=_fraction, default=0.2,
                   help="fraction of rows held out for the test score (digits and files; fashion-mnist has "
                        "its own test set)")
    t.add_argument("--seed", type=_seed, default=0, help="seed for initialization, shuffling and the split")
    t.add_argument("--threads", type=_positive_int, default=None,
                   help="threads (default: OMP_NUM_THREADS, else all cores)")
    t.add_argument("--delimiter", default="auto",
                   help="text files: auto (sniff , ; tab | or whitespace), tab, whitespace, or a character")
    t.add_argument("--index-column", default="auto", choices=["auto", "drop", "keep"],
                   help="text files: the first column is an index (row numbers) to drop; auto drops it when "
                        "its header is empty, 'Unnamed: 0' or 'index', or (no header) when it holds 0..n-1 or 1..n")
    t.add_argument("--save", default=None, help="write the trained model (and its class names and feature "
                                                "scaling, for nerve predict) to this file")
    t.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    t.add_argument("--backup-dir", default=None, metavar="DIR",
                   help="back the run up into DIR after every epoch; run the same command again after a "
                        "kill to resume where it stopped (nv.callbacks.BackupAndRestore)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run under mpirun -n N (needs nerve[mpi]); "
                        "--batch-size is per rank")
    p = sub.add_parser("predict", formatter_class=fmt,
                       help="predict with a model saved by nerve train --save",
                       description="Predict with a model saved by `nerve train --save`: reads DATA (same formats "
                                   "as train; a trailing label column is ignored), applies the saved feature "
                                   "scaling, writes one prediction per row (class names for classification) "
                                   "as CSV with a 'prediction' header.")
    p.add_argument("model", metavar="MODEL", help="a model file from nerve train --save")
    p.add_argument("data", metavar="DATA", help="rows to predict: .csv/.tsv/.txt/.npz (array x)")
    p.add_argument("--out", default=None, help="write the predictions here (default: standard output)")
    p.add_argument("--delimiter", default="auto", help="as for train")
    p.add_argument("--index-column", default="auto", choices=["auto", "drop", "keep"],
                   help="as for train; auto also drops it when the training file had one")
    sub.add_parser("info", formatter_class=fmt, help="build information (compiler, SIMD, OpenMP, threads)")
    b = sub.add_parser("bench", formatter_class=fmt,
                       help="end-to-end training benchmark (optionally against PyTorch and JAX)")
    b.add_argument("--against", choices=["torch", "jax", "torch,jax"], default=None,
                   help="compare with PyTorch eager and/or jitted JAX in the same run")
    return parser


def main(argv=None):
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"train": train, "predict": predict, "info": info, "bench": bench}[args.command](args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"nerve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
