"""Batch gradient descent vs stochastic vs mini-batch on the digits: the
playbook's trade-off between gradient noise, generalization and speed.

Same network, same initial weights, same optimizer (plain SGD, one learning
rate) and the same number of epochs for every batch size; batch GD takes one
step per epoch, batch 1 takes one per example. Prints time per epoch, updates
per epoch, the epoch and step at which the training loss (on the whole
training set, measured after each epoch) first falls below a target, the
final training loss and the test accuracy; saves a plot of the training loss
against epochs and against steps.

    python examples/batch_size.py --out /tmp/bs
"""
import argparse
import os
import time

import numpy as np

import nerve as nv


def train(x_tr, y_tr, x_te, y_te, batch_size, epochs, lr, seed):
    nv.manual_seed(seed)  # same initial weights for every batch size
    model = nv.Sequential([nv.layers.Dense(64, activation="relu"), nv.layers.Dense(10)], input_dim=x_tr.shape[1])
    model.compile(optimizer=nv.optimizers.SGD(lr=lr), loss="cross_entropy", metrics=["accuracy"])
    losses, seconds = [], 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.fit(x_tr, y_tr, epochs=1, batch_size=batch_size, verbose=0, seed=seed)
        seconds += time.perf_counter() - t0
        losses.append(model.evaluate(x_tr, y_tr)["loss"])  # the whole training set, after the epoch
    acc = model.evaluate(x_te, y_te)["accuracy"]
    return np.array(losses), seconds / epochs, acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for the PNG (default: current dir)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", type=float, default=0.3, help="target training loss")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 64, 128, 256, 0],
                    help="0 means the full training set (batch gradient descent)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if not args.no_plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SystemExit("this example plots with matplotlib: pip install matplotlib (or use --no-plot)")
    os.makedirs(args.out, exist_ok=True)

    x, y = nv.datasets.load_digits()
    x_tr, x_te, y_tr, y_te = nv.datasets.train_test_split(x, y, test_size=0.2, seed=args.seed)
    n = len(x_tr)
    print(f"digits: {n} training, {len(x_te)} test images; SGD lr={args.lr}, {args.epochs} epochs, "
          f"target training loss {args.target}\n")
    rows = ["| batch | updates/epoch | time/epoch (ms) | epochs to target | steps to target | final train loss "
            "| test accuracy |", "|---|---|---|---|---|---|---|"]
    curves = {}
    for bs in args.batch_sizes:
        b = n if bs == 0 else bs
        label = f"full ({n})" if bs == 0 or bs >= n else str(bs)
        losses, per_epoch, acc = train(x_tr, y_tr, x_te, y_te, b, args.epochs, args.lr, args.seed)
        steps_per_epoch = -(-n // b)
        hit = np.flatnonzero(losses < args.target)
        ep = int(hit[0]) + 1 if len(hit) else None
        rows.append(f"| {label} | {steps_per_epoch} | {1e3 * per_epoch:.2f} | {ep if ep else 'not reached'} | "
                    f"{ep * steps_per_epoch if ep else '-'} | {losses[-1]:.4f} | {acc:.4f} |")
        curves[label] = (losses, steps_per_epoch)
    print("\n".join(rows))
    print("\n(steps to target are measured at epoch ends: a multiple of updates/epoch)")
    if not args.no_plot:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for label, (losses, spe) in curves.items():
            ep = np.arange(1, len(losses) + 1)
            a1.plot(ep, losses, "-o", ms=3, label=f"batch {label}")
            a2.plot(ep * spe, losses, "-o", ms=3, label=f"batch {label}")
        for a in (a1, a2):
            a.axhline(args.target, color="k", lw=0.8, ls="--")
            a.set_yscale("log")
            a.set_ylabel("training loss")
            a.grid(alpha=0.3)
        a1.set_xlabel("epoch")
        a2.set_xlabel("updates (steps)")
        a2.set_xscale("log")
        a1.legend(fontsize=8)
        a1.set_title("per epoch: small batches learn more per pass")
        a2.set_title("per update: at one lr, about the same progress per step")
        path = os.path.join(args.out, "batch_size.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
