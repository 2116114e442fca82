"""Every nerve activation and its derivative, computed by nerve's own kernels
(``forward`` and ``backward`` with dy = 1), in one grid of plots.

    python examples/plot_activations.py --out docs      # writes docs/activations.png

Prints a table of f(x) and f'(x) at a few points. The picture needs
matplotlib (an optional extra: pip install matplotlib).
"""
import argparse
import os
import sys

import numpy as np

import nerve as nv

# (title, how to evaluate): elementwise activations by name and parameters,
# plus the row-wise / width-changing / learnable ones evaluated on one column.
PANELS = [
    ("identity", ("identity", {})),
    ("sigmoid", ("sigmoid", {})),
    ("tanh", ("tanh", {})),
    ("relu", ("relu", {})),
    ("leaky_relu (alpha=0.1)", ("leaky_relu", {"alpha": 0.1})),
    ("elu (alpha=1)", ("elu", {})),
    ("selu", ("selu", {})),
    ("swish / silu (beta=1)", ("swish", {})),
    ("gelu", ("gelu", {})),
    ("gelu (tanh)", ("gelu", {"approximate": "tanh"})),
    ("softplus", ("softplus", {})),
    ("mish", ("mish", {})),
    ("hard_sigmoid", ("hard_sigmoid", {})),
    ("hard_swish", ("hard_swish", {})),
    ("relu6", ("relu6", {})),
    ("binary_step", ("binary_step", {})),
    ("rrelu (training draws)", "rrelu_train"),
    ("crelu: [relu(x), relu(-x)]", "crelu"),
    ("softmax([x, 0])[0]", "softmax"),
    ("log_softmax([x, 0])[0]", "log_softmax"),
    ("PReLU layer (a=0.25)", "prelu"),
    ("Swish layer (beta=2)", "swish_layer"),
    ("Maxout layer (3 pieces)", "maxout"),
]


def evaluate(spec, x):
    """(list of curves f, list of derivative curves) for a 1-D grid x."""
    col = x.reshape(-1, 1).astype(np.float32)
    if isinstance(spec, tuple):
        act = nv.activations.get(spec[0], **spec[1])
        y = act.forward(col)
        return [y[:, 0]], [act.backward(col, np.ones_like(y), y=y)[:, 0]]
    if spec == "rrelu_train":
        act = nv.activations.get("rrelu")
        y = act.forward(col, training=True, seed=1, step=1)
        return [y[:, 0]], [act.backward(col, np.ones_like(y), training=True, seed=1, step=1)[:, 0]]
    if spec == "crelu":
        act = nv.activations.get("crelu")
        y = act.forward(col)
        d_pos = act.backward(col, np.array([[1.0, 0.0]] * len(x), np.float32))[:, 0]
        d_neg = act.backward(col, np.array([[0.0, 1.0]] * len(x), np.float32))[:, 0]
        return [y[:, 0], y[:, 1]], [d_pos, d_neg]
    if spec in ("softmax", "log_softmax"):
        act = nv.activations.get(spec)
        rows = np.concatenate([col, np.zeros_like(col)], axis=1)
        y = act.forward(rows)
        dy = np.zeros_like(y)
        dy[:, 0] = 1.0
        return [y[:, 0]], [act.backward(rows, dy, y=y)[:, 0]]
    if spec == "maxout":
        # One unit, three linear pieces of x: a learnable convex piecewise-linear function.
        layer = nv.layers.Maxout(1, pieces=3)
        layer.build(1)
        layer._ensure_standalone(1)
        layer.kernel.value = np.array([[-0.5, 0.3, 1.5]], np.float32)
        layer.bias.value = np.array([-1.0, 0.0, -2.0], np.float32)
        y = layer.forward(col)
        return [y[:, 0]], [layer.backward(np.ones_like(y))[:, 0]]
    layer = nv.layers.PReLU(init=0.25) if spec == "prelu" else nv.layers.Swish(beta=2.0)
    y = layer.forward(col)
    return [y[:, 0]], [layer.backward(np.ones_like(y))[:, 0]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".", help="folder for activations.png")
    args = ap.parse_args(argv)

    x = np.linspace(-5, 5, 1001)
    points = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    print(f"{'activation':<28}" + "".join(f"{'f(' + format(p, 'g') + ')':>9}" for p in points)
          + "   " + "".join(f"{'df(' + format(p, 'g') + ')':>9}" for p in points))
    curves = {}
    for title, spec in PANELS:
        ys, ds = evaluate(spec, x)
        curves[title] = (ys, ds)
        py, pd = evaluate(spec, points)
        print(f"{title:<28}" + "".join(f"{v:9.4f}" for v in py[0]) + "   " + "".join(f"{v:9.4f}" for v in pd[0]))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): table printed, no picture", file=sys.stderr)
        return 1
    cols = 4
    rows = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), sharex=True)
    for ax, (title, _) in zip(axes.flat, PANELS):
        ys, ds = curves[title]
        for k, y in enumerate(ys):
            ax.plot(x, y, color="C0", lw=2, ls="-" if k == 0 else "--", label="f(x)" if k == 0 else None)
        for k, d in enumerate(ds):
            style = dict(s=2) if title.startswith("rrelu") else {}
            if style:
                ax.scatter(x, d, color="C3", label="f'(x)", **style)
            else:
                ax.plot(x, d, color="C3", lw=1.3, ls="-" if k == 0 else "--", label="f'(x)" if k == 0 else None)
        ax.axhline(0, color="0.7", lw=0.6)
        ax.axvline(0, color="0.7", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-2.2, 5.2)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    axes.flat[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("nerve activations (blue) and derivatives (red), from nerve's forward/backward kernels")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "activations.png")
    fig.savefig(path, dpi=90)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
