"""The vanishing-gradient problem, measured: a 10-layer MLP on the 8x8 digits
with sigmoid, tanh, ReLU, ELU and SELU, and the gradient norm of every
layer's kernel after a few training steps.

    python examples/vanishing_gradients.py [--out DIR] [--steps 20]

With sigmoid (whose derivative is at most 1/4) the gradient shrinks by a
large factor at every layer on the way down, so the first layers barely
learn; tanh (derivative up to 1, zero-centred) loses less, and ReLU / ELU /
SELU with their matching initializers (He for ReLU/ELU, LeCun-normal for
SELU, as the playbook pairs them) keep the gradient roughly the same size
from the top layer to the bottom one. Prints the table and saves
vanishing_gradients.png (matplotlib, an optional extra).
"""
import argparse
import os
import sys

import numpy as np

import nerve as nv

SETUPS = [  # activation, kernel initializer (Glorot for sigmoid/tanh, as in Glorot & Bengio 2010)
    ("sigmoid", "glorot_uniform"),
    ("tanh", "glorot_uniform"),
    ("relu", "he_normal"),
    ("elu", "he_normal"),
    ("selu", "lecun_normal"),
]


def layer_grad_norms(act, init, x, y, depth, width, steps, batch, seed):
    nv.manual_seed(seed)
    layers = [nv.layers.Dense(width, activation=act, kernel_initializer=init) for _ in range(depth)]
    model = nv.Sequential(layers + [nv.layers.Dense(10, kernel_initializer=init)], input_dim=x.shape[1])
    model.compile(optimizer=nv.optimizers.SGD(lr=0.01), loss="cross_entropy")
    r = np.random.default_rng(seed)
    for _ in range(steps):  # a few ordinary steps first, as the playbook measures during training
        idx = r.integers(0, len(x), batch)
        model.train_step(x[idx], y[idx])
    # Then one manual forward/backward on a fixed batch, reading each kernel's gradient.
    loss = nv.losses.get("cross_entropy")
    for p in model.parameters():
        p.grad[...] = 0.0
    out = model.forward(x[:512], training=True)
    model.backward(loss.backward(out, y[:512]))
    return [float(np.linalg.norm(layer.kernel.grad)) for layer in model.layers]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".", help="folder for vanishing_gradients.png")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    x, y = nv.datasets.load_digits()
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # standardised inputs (SELU assumes it)
    x = x.astype(np.float32)

    norms = {act: layer_grad_norms(act, init, x, y, args.depth, args.width, args.steps, 64, args.seed)
             for act, init in SETUPS}
    names = [f"layer {i + 1}" for i in range(args.depth)] + ["output"]
    print(f"|dL/dW| per layer after {args.steps} SGD steps ({args.depth} hidden layers of {args.width}, digits)")
    print(f"{'':<10}" + "".join(f"{act:>12}" for act, _ in SETUPS))
    for i, name in enumerate(names):
        print(f"{name:<10}" + "".join(f"{norms[act][i]:12.2e}" for act, _ in SETUPS))
    print(f"{'top/bottom':<10}" + "".join(f"{norms[act][-2] / norms[act][0]:12.1f}" for act, _ in SETUPS))
    print("(top/bottom = last hidden layer's gradient norm over the first's: >> 1 means the gradient vanishes "
          "on its way down)")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): table printed, no plot", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for act, init in SETUPS:
        ax.semilogy(range(1, len(names) + 1), norms[act], marker="o", label=f"{act} ({init})")
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels([str(i + 1) for i in range(args.depth)] + ["out"])
    ax.set_xlabel("layer (input side → output side)")
    ax.set_ylabel("‖dL/dW‖ (log scale)")
    ax.set_title(f"Gradient norm per layer, {args.depth}-layer MLP on digits")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "vanishing_gradients.png")
    fig.savefig(path, dpi=100)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
