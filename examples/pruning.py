"""Magnitude pruning on the digits: prune a trained MLP to 50/80/90/95%
sparsity (per layer and global), fine-tune with the pruned weights held at
zero, and report test accuracy before and after fine-tuning.

    python examples/pruning.py [--out DIR] [--epochs 30] [--finetune 20]

Prints a table and saves pruning.png (accuracy against sparsity) to --out.
References: Han et al. (2015); Zhu & Gupta (2017).
"""
import argparse
import os
import tempfile
import time

import numpy as np

import nerve as nv

SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for pruning.png")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the dense model")
    ap.add_argument("--finetune", type=int, default=20, help="fine-tuning epochs after pruning")
    args = ap.parse_args(argv)

    x, y = nv.datasets.load_digits()
    x = x / 16.0
    xtr, xte, ytr, yte = nv.datasets.train_test_split(x, y, test_size=0.3, seed=0)
    nv.manual_seed(0)
    dense = nv.Sequential([nv.layers.Dense(256, activation="relu", kernel_initializer="he_normal"),
                           nv.layers.Dense(128, activation="relu", kernel_initializer="he_normal"),
                           nv.layers.Dense(10)], input_dim=64)
    dense.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy", metrics=["accuracy"])
    start = time.perf_counter()
    dense.fit(xtr, ytr, epochs=args.epochs, batch_size=32, verbose=0)
    base = dense.evaluate(xte, yte)["accuracy"]
    print(f"dense model: {dense.count_params():,} parameters, test accuracy {base:.4f} "
          f"({time.perf_counter() - start:.1f} s)\n")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dense.nerve")
        dense.save(path)
        rows = []
        for scope in ("layer", "global"):
            for s in SPARSITIES:
                model = nv.load_model(path)  # a fresh copy of the trained dense model
                nv.pruning.prune_magnitude(model, s, scope=scope)
                pruned = model.evaluate(xte, yte)["accuracy"]
                model.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy", metrics=["accuracy"])
                model.fit(xtr, ytr, epochs=args.finetune, batch_size=32, verbose=0)
                rep = nv.pruning.sparsity(model)
                tuned = model.evaluate(xte, yte)["accuracy"]
                rows.append((scope, s, rep, pruned, tuned))

    print(f"{'scope':<8}{'target':>8}{'actual':>8}{'per layer (kernels)':>26}{'pruned acc':>12}"
          f"{'fine-tuned':>12}{'vs dense':>10}")
    print("-" * 84)
    for scope, s, rep, pruned, tuned in rows:
        per = "/".join(f"{r['sparsity']:.2f}" for r in rep["layers"])
        print(f"{scope:<8}{s:>8.0%}{rep['overall']:>8.1%}{per:>26}{pruned:>12.4f}{tuned:>12.4f}"
              f"{tuned - base:>+10.4f}")

    try:
        import matplotlib
    except ImportError:
        print("\nmatplotlib is not installed: no plot (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for scope, marker in (("layer", "o"), ("global", "s")):
        sel = [r for r in rows if r[0] == scope]
        ax.plot([r[1] for r in sel], [r[3] for r in sel], marker=marker, ls="--", label=f"{scope}: pruned")
        ax.plot([r[1] for r in sel], [r[4] for r in sel], marker=marker, label=f"{scope}: fine-tuned")
    ax.axhline(base, color="gray", lw=0.8, label="dense")
    ax.set(xlabel="sparsity of the kernels", ylabel="test accuracy", title="magnitude pruning, digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "pruning.png")
    fig.savefig(out, dpi=120)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
