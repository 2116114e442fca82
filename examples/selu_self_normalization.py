"""SELU self-normalization (Klambauer et al., 2017, "Self-Normalizing Neural
Networks"): a stack of 1,000 Dense + SELU layers of width 100 with LeCun-normal
initialization keeps the activations at mean ≈ 0 and std ≈ 1 all the way
down, with no batch norm.

For contrast the same 1,000-layer stack with ReLU + He-normal and with
tanh + Xavier (Glorot uniform). He initialization keeps ReLU's second moment
only in expectation: at finite width the scale performs a multiplicative
random walk whose typical path decays (E[log q] drifts down), so the signal
dies out over hundreds of layers. tanh's activations shrink towards 0 layer
after layer (its slope is below 1 away from 0).

Plain forward passes through nerve Dense layers on standardized Gaussian
input; the mean and std over the whole batch are printed every 100 layers.

Usage: python examples/selu_self_normalization.py [--out DIR] [--depth 1000] [--width 100]
"""
import argparse
import os
import sys
import time

import numpy as np

import nerve as nv

CONFIGS = [("selu", "lecun_normal"), ("relu", "he_normal"), ("tanh", "glorot_uniform")]


def run(act, init, depth, width, x):
    nv.manual_seed(0)
    model = nv.Sequential([nv.layers.Dense(width, activation=act, kernel_initializer=init)
                           for _ in range(depth)], input_dim=width)
    means, stds = [float(x.mean())], [float(x.std())]
    h = x
    for layer in model.layers:            # the layers' own forward, one at a time
        h = layer.forward(h)
        means.append(float(h.mean(dtype=np.float64)))
        stds.append(float(h.std(dtype=np.float64)))
    return np.array(means), np.array(stds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for the PNG (default: current directory)")
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.batch, args.width)).astype(np.float32)
    results = {}
    t = time.perf_counter()
    for act, init in CONFIGS:
        results[(act, init)] = run(act, init, args.depth, args.width, x)
    seconds = time.perf_counter() - t
    print(f"{args.depth} Dense layers of width {args.width}, batch of {args.batch} N(0, 1) rows "
          f"({seconds:.1f} s for {len(CONFIGS)} stacks)\n")
    header = f"{'layer':>6}" + "".join(f"{act + ' / ' + init:>32}" for act, init in CONFIGS)
    print(header)
    print(f"{'':>6}" + "".join(f"{'mean':>16}{'std':>16}" for _ in CONFIGS))
    for i in range(0, args.depth + 1, max(1, args.depth // 10)):
        row = f"{i:>6}"
        for key in results:
            means, stds = results[key]
            row += f"{means[i]:>16.4f}{stds[i]:>16.4g}"
        print(row)
    m, s = results[CONFIGS[0]]
    print(f"\nSELU over all {args.depth} layers: mean in [{m[1:].min():.3f}, {m[1:].max():.3f}], "
          f"std in [{s[1:].min():.3f}, {s[1:].max():.3f}]")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib to get the plot", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    layers = np.arange(args.depth + 1)
    for (act, init), (means, stds) in results.items():
        axes[0].plot(layers, means, label=f"{act} / {init}")
        axes[1].semilogy(layers, np.maximum(stds, 1e-30), label=f"{act} / {init}")
    axes[0].set_title("activation mean per layer")
    axes[1].set_title("activation std per layer (log scale)")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "selu_self_normalization.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
