"""The playbook's default recipe against a plain MLP on Fashion-MNIST.

Recipe (the "default DNN configuration" of the deep-learning playbook):
He-normal initialization, ELU, batch normalization, dropout, Adam, and early
stopping on the validation loss (patience 4, best weights restored). The
plain MLP uses Glorot-uniform ReLU layers, plain SGD and a fixed number of
epochs. A 4,000-image training subset keeps the run under a minute.

    python examples/training_guide.py [--out DIR] [--train 4000] [--epochs 16]

Prints a table and saves training_guide.png (validation loss and accuracy
per epoch) to --out.
"""
import argparse
import os
import time

import numpy as np

import nerve as nv


def plain_mlp():
    return nv.Sequential([nv.layers.Dense(200, activation="relu"), nv.layers.Dense(100, activation="relu"),
                          nv.layers.Dense(10)], input_dim=784, name="plain MLP")


def recipe_mlp():
    he = dict(activation="elu", kernel_initializer="he_normal")
    return nv.Sequential([nv.layers.Dense(200, **he), nv.layers.BatchNorm(), nv.layers.Dropout(0.2),
                          nv.layers.Dense(100, **he), nv.layers.BatchNorm(), nv.layers.Dropout(0.2),
                          nv.layers.Dense(10)], input_dim=784, name="recipe")


def snapshot(model):
    return [p.numpy() for p in model.parameters()], [b.copy() for b in model.buffers()]


def restore(model, snap):
    for p, v in zip(model.parameters(), snap[0]):
        p.value = v
    for b, v in zip(model.buffers(), snap[1]):
        b[...] = v


def train(model, optimizer, data, epochs, patience=None, batch_size=64):
    """Epoch loop on the validation loss; with `patience`, stops after that many
    epochs without improvement and restores the best weights (Keras
    EarlyStopping(restore_best_weights=True) semantics)."""
    (xtr, ytr), (xva, yva) = data
    model.compile(optimizer=optimizer, loss="cross_entropy", metrics=["accuracy"])
    curve = {"val_loss": [], "val_accuracy": [], "loss": []}
    best, best_epoch, snap = np.inf, 0, None
    start = time.perf_counter()
    for epoch in range(epochs):
        h = model.fit(xtr, ytr, epochs=1, batch_size=batch_size, verbose=0, seed=epoch)
        val = model.evaluate(xva, yva)
        curve["loss"].append(h.history["loss"][0])
        curve["val_loss"].append(val["loss"])
        curve["val_accuracy"].append(val["accuracy"])
        if val["loss"] < best:
            best, best_epoch, snap = val["loss"], epoch, snapshot(model)
        elif patience is not None and epoch - best_epoch >= patience:
            break
    seconds = time.perf_counter() - start
    if patience is not None and snap is not None:
        restore(model, snap)
    return curve, best_epoch, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for training_guide.png")
    ap.add_argument("--train", type=int, default=4000, help="training images used (of 60,000)")
    ap.add_argument("--epochs", type=int, default=16)
    args = ap.parse_args(argv)

    (x, y), (xte, yte) = nv.datasets.load_fashion_mnist()
    nv.manual_seed(0)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, va = perm[: args.train], perm[args.train: args.train + args.train // 3]
    data = ((x[tr], y[tr]), (x[va], y[va]))

    runs = {}
    nv.manual_seed(1)
    m = plain_mlp()
    runs["plain MLP (Glorot, ReLU, SGD)"] = (m, *train(m, nv.optimizers.SGD(lr=0.05), data, args.epochs))
    nv.manual_seed(1)
    m = recipe_mlp()
    runs["recipe (He, ELU, BN, dropout, Adam, early stop)"] = (
        m, *train(m, nv.optimizers.Adam(lr=1e-3), data, args.epochs, patience=4))

    print(f"Fashion-MNIST: {len(tr)} training, {len(va)} validation, {len(xte)} test images\n")
    print(f"{'model':<50}{'epochs':>7}{'best ep':>8}{'val loss':>10}{'val acc':>9}{'test acc':>9}{'time s':>8}")
    print("-" * 101)
    for name, (model, curve, best_epoch, seconds) in runs.items():
        test = model.evaluate(xte, yte)
        val_loss = min(curve["val_loss"]) if "recipe" in name else curve["val_loss"][-1]
        val_acc = curve["val_accuracy"][best_epoch] if "recipe" in name else curve["val_accuracy"][-1]
        best = f"{best_epoch + 1}" if "recipe" in name else "-"
        print(f"{name:<50}{len(curve['val_loss']):>7}{best:>8}{val_loss:>10.4f}{val_acc:>9.4f}"
              f"{test['accuracy']:>9.4f}{seconds:>8.1f}")

    try:
        import matplotlib
    except ImportError:
        print("\nmatplotlib is not installed: no plot (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, (_, curve, best_epoch, _) in runs.items():
        ep = np.arange(1, len(curve["val_loss"]) + 1)
        line, = axes[0].plot(ep, curve["val_loss"], marker="o", ms=3, label=name)
        axes[0].plot(ep, curve["loss"], ls=":", color=line.get_color())
        axes[1].plot(ep, curve["val_accuracy"], marker="o", ms=3, label=name)
        if "recipe" in name:
            for ax, key in ((axes[0], "val_loss"), (axes[1], "val_accuracy")):
                ax.axvline(best_epoch + 1, color=line.get_color(), ls="--", lw=0.8)
    axes[0].set(xlabel="epoch", ylabel="loss (dotted: training)", title="validation loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "training_guide.png")
    fig.savefig(path, dpi=120)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
