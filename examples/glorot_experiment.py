"""Glorot & Bengio (2010), "Understanding the difficulty of training deep
feedforward neural networks", in a minute on the CPU.

Deep sigmoid and tanh nets (5 hidden layers) are initialized three ways:
N(0, 1) weights, the then-standard U(±1/√fan_in), and Xavier/Glorot
U(±√(6/(fan_in + fan_out))). For each, nv.diagnostics.layer_stats reports per
layer the activation std, the fraction of saturated units and the variance
of the back-propagated gradient dL/dy; then each net trains briefly with SGD.

What to look for (the paper's observations), with what we measured here:
- N(0, 1): most units saturate (tanh: ~80% with |y| > 0.99 in every layer,
  sigmoid: 50-65%); tanh's back-propagated gradient variance grows ~1,700x
  from the top hidden layer down to the first (exploding);
- U(±1/√n) with tanh: activations shrink layer after layer (std 0.25 -> 0.03)
  and the back-propagated gradient variance shrinks ~80x towards the input
  (vanishing);
- Xavier with tanh: activation std and gradient variance stay within about
  2x across the 5 layers, and the net trains best;
- sigmoid with small weights (U(±1/√n) or Xavier): its outputs are not
  centred on 0, gradients vanish towards the input by 5-7 orders of
  magnitude and the net stays at chance (11%) after 2 epochs of plain SGD;
  N(0, 1) weights keep sigmoid gradients alive at the price of saturation
  (60%). The paper's reason to prefer tanh — and ours to prefer ELU/SELU
  with He/LeCun initialization.

Usage: python examples/glorot_experiment.py [--out DIR] [--samples N]
"""
import argparse
import os
import sys
import time

import numpy as np

import nerve as nv

INITS = {"N(0,1)": nv.initializers.get("random_normal", stddev=1.0),
         "U(±1/√n)": "standard_uniform",
         "Xavier": "glorot_uniform"}


def load(samples):
    try:
        (xtr, ytr), (xte, yte) = nv.datasets.load_fashion_mnist()
        name = "Fashion-MNIST"
    except (OSError, ValueError, ImportError):
        x, y = nv.datasets.load_digits()
        xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
        name = "digits"
    return name, xtr[:samples], ytr[:samples], xte[:2000], yte[:2000]


def build(act, init, input_dim, depth=5, width=128):
    layers = [nv.layers.Dense(width, activation=act, kernel_initializer=init) for _ in range(depth)]
    layers.append(nv.layers.Dense(10, kernel_initializer=init))
    m = nv.Sequential(layers, input_dim=input_dim)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy", metrics=["accuracy"])
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for the PNG (default: current directory)")
    ap.add_argument("--samples", type=int, default=3000, help="training rows")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    name, x, y, xte, yte = load(args.samples)
    probe_x, probe_y = x[:500], y[:500]
    print(f"{name}: {len(x)} training rows, 5 hidden layers of 128 units, SGD lr=0.1, {args.epochs} epochs\n")
    results = {}
    for act in ("sigmoid", "tanh"):
        for label, init in INITS.items():
            nv.manual_seed(0)
            m = build(act, init, x.shape[1])
            stats = nv.diagnostics.layer_stats(m, probe_x, probe_y)[:-1]   # hidden layers
            t = time.perf_counter()
            m.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0, seed=0)
            seconds = time.perf_counter() - t
            acc = m.evaluate(xte, yte)["accuracy"]
            results[(act, label)] = (stats, acc, seconds)

    print(f"{'act':<8}{'init':<10}{'':>8}" + "".join(f"{'layer ' + str(i + 1):>11}" for i in range(5))
          + f"{'test acc':>10}")
    for (act, label), (stats, acc, _) in results.items():
        rows = [("act std", [s["act_std"] for s in stats], "{:>11.3f}"),
                ("satur.", [s["saturated"] for s in stats], "{:>11.1%}"),
                ("dL/dy var", [s["out_grad_std"] ** 2 for s in stats], "{:>11.2e}"),
                ("dL/dW var", [s["grad_std"] ** 2 for s in stats], "{:>11.2e}")]
        for j, (what, vals, fmt) in enumerate(rows):
            head = f"{act if j == 0 else '':<8}{label if j == 0 else '':<10}{what:>8}"
            tail = f"{acc:>10.3f}" if j == 0 else ""
            print(head + "".join(fmt.format(v) for v in vals) + tail)
        print()

    # The paper's summary numbers: how much the back-propagated gradient variance
    # changes from the top hidden layer to the bottom one.
    print("ratio of dL/dy variance, layer 1 / layer 5 (1 = no vanishing):")
    for (act, label), (stats, _, _) in results.items():
        print(f"  {act:<8}{label:<10}{stats[0]['out_grad_std'] ** 2 / stats[-1]['out_grad_std'] ** 2:10.3g}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib to get the plot", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, act in enumerate(("sigmoid", "tanh")):
        for label in INITS:
            stats = results[(act, label)][0]
            layers = np.arange(1, len(stats) + 1)
            axes[0, col].plot(layers, [s["act_std"] for s in stats], "o-", label=label)
            axes[1, col].semilogy(layers, [s["out_grad_std"] ** 2 for s in stats], "o-", label=label)
        axes[0, col].set_title(f"{act}: activation std per layer")
        axes[1, col].set_title(f"{act}: back-propagated gradient variance")
        axes[1, col].set_xlabel("hidden layer")
        axes[0, col].legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "glorot_experiment.png")
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
