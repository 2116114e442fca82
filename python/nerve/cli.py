"""The ``nerve`` command: ``nerve train``, ``nerve info``, ``nerve bench``."""
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


def _load(dataset, seed):
    from . import datasets

    if dataset == "digits":
        x, y = datasets.load_digits()
        x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=seed)
        return "digits", x_tr, y_tr, x_te, y_te
    if dataset in ("fashion-mnist", "fashion_mnist"):
        (x_tr, y_tr), (x_te, y_te) = datasets.load_fashion_mnist()
        return "fashion-mnist", x_tr, y_tr, x_te, y_te
    if os.path.exists(dataset):
        x, y = datasets.load_file(dataset)
        x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=seed)
        x_tr, x_te = datasets.standardize(x_tr, x_te)
        return "file", x_tr, y_tr, x_te, y_te
    raise SystemExit(f"nerve train: unknown dataset {dataset!r} (digits, fashion-mnist, or a .csv/.npz path)")


def train(args):
    import nerve as nv

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
    kind, x_tr, y_tr, x_te, y_te = _load(args.dataset, args.seed)
    n_train = x_tr.shape[0]
    out = print if rank == 0 else (lambda *a, **k: None)
    defaults = _DEFAULTS[kind]
    layers = [int(u) for u in (args.layers or defaults["layers"]).split(",") if u.strip()]
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    batch_size = args.batch_size or defaults["batch_size"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    classification = y_tr.dtype.kind in "iu"
    out_dim = int(max(y_tr.max(), y_te.max()) + 1) if classification else (1 if y_tr.ndim == 1 else y_tr.shape[1])
    init = "he_normal" if args.activation in ("relu", "leaky_relu", "elu", "gelu", "swish", "silu") else "glorot_uniform"
    model = nv.Sequential(
        [nv.layers.Dense(u, activation=args.activation, kernel_initializer=init) for u in layers]
        + [nv.layers.Dense(out_dim)],
        input_dim=x_tr.shape[1],
    )
    optimizer = nv.optimizers.get(args.optimizer, lr=lr)
    model.compile(optimizer=optimizer, loss="cross_entropy" if classification else "mse",
                  metrics=["accuracy"] if classification else [])
    where = f", {ranks} ranks x batch {batch_size} per rank" if nvd else ""
    out(f"nerve {nv.__version__}: {kind} — {x_tr.shape[0]} train / {x_te.shape[0]} test rows, "
        f"{x_tr.shape[1]} features; layers {layers} ({args.activation}), {type(optimizer).__name__} "
        f"lr={lr}, batch {batch_size}, {epochs} epochs, {nv.get_num_threads()} threads{where}")
    if nvd:
        x_tr, y_tr = nvd.shard(x_tr, y_tr)
        x_te, y_te = nvd.shard(x_te, y_te)
        nvd.barrier()
    t0 = time.perf_counter()
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, verbose=1, seed=args.seed,
              distributed=bool(nvd))
    seconds = time.perf_counter() - t0
    result = nvd.evaluate(model, x_te, y_te) if nvd else model.evaluate(x_te, y_te)
    summary = {
        "dataset": kind if kind != "file" else args.dataset,
        "test_loss": round(float(result["loss"]), 6),
        "epochs": epochs,
        "train_seconds": round(seconds, 3),
        "samples_per_sec": round(epochs * n_train / seconds, 1),
        "layers": layers,
        "activation": args.activation,
        "optimizer": type(optimizer).__name__,
        "lr": lr,
        "batch_size": batch_size,
        "threads": nv.get_num_threads(),
        "seed": args.seed,
    }
    if nvd:
        summary["ranks"] = ranks
    if classification:
        summary["test_accuracy"] = round(float(result["accuracy"]), 4)
    if args.save:
        if rank == 0:
            model.save(args.save)
        summary["saved"] = args.save
    if rank != 0:
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        acc = f"test accuracy {summary['test_accuracy']:.4f}, " if classification else ""
        print(f"done: {acc}test loss {summary['test_loss']:.4f}, {seconds:.1f}s, "
              f"{summary['samples_per_sec']:,.0f} samples/s")
    return 0


def info(args):
    import nerve as nv

    for k, v in nv.build_info().items():
        print(f"{k}: {v}")
    return 0


def bench(args):
    from . import benchmark

    return benchmark.main(["--against", args.against] if args.against else [])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nerve", description="Fast feed-forward network training on the CPU")
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train an MLP on a dataset and report test accuracy")
    t.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist, or PATH.csv / PATH.npz")
    t.add_argument("--layers", help="hidden layer widths, e.g. 300,100")
    t.add_argument("--activation", default="relu")
    t.add_argument("--optimizer", default="adam")
    t.add_argument("--lr", type=float)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    t.add_argument("--save", help="write the trained model to this file")
    t.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run under mpirun -n N (needs nerve[mpi]); "
                        "--batch-size is per rank")
    sub.add_parser("info", help="build information (compiler, SIMD, OpenMP, threads)")
    b = sub.add_parser("bench", help="end-to-end training benchmark (optionally against PyTorch)")
    b.add_argument("--against", choices=["torch"], help="compare with PyTorch eager in the same run")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["train"] + (argv or sys.argv[1:]))
    try:
        return {"train": train, "info": info, "bench": bench}[args.command](args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"nerve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
