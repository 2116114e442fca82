"""Vanishing gradients on sequences: the adding problem (Hochreiter &
Schmidhuber 1997) with SimpleRNN (tanh), LSTM and GRU.

    python examples/sequences_adding.py [--length 60] [--epochs 12] [--out DIR]

Each sequence has `length` steps of two features: a random value in [0, 1]
and a marker that is 1 at exactly two steps, one in the first tenth of the
sequence and one in the second half. The target is the sum of the two
marked values. Predicting the mean (1.0) gives a mean squared error of about
1/6 = 0.167; a model that solves the task goes far below it.

The first marked value sits ~`length` steps before the output. A SimpleRNN
has to carry it through `length` multiplications by its recurrent Jacobian
(tanh' <= 1 times W_hh): the gradient that reaches early steps shrinks
geometrically, so the model never learns that they matter and stays near
0.167. LSTM's cell state is updated additively (c_t = f * c_{t-1} + i * g,
the "residual memory" of the playbook) and GRU's state interpolates
(h_t = (1 - z) * n + z * h_{t-1}), so the gradient reaching the early steps
stays usable and both learn the task.

Prints the validation MSE per epoch of each model and, after training, the
norm of d loss / d x_t for each step t (model.backward with
return_input_grad=True): the vanishing gradient itself. Saves
sequences_adding.png (matplotlib, an optional extra).
"""
import argparse
import os
import sys
import time

import numpy as np

import nerve as nv

CELLS = ("SimpleRNN", "LSTM", "GRU")


def adding_problem(n, length, seed):
    r = np.random.default_rng(seed)
    x = np.zeros((n, length, 2), np.float32)
    x[:, :, 0] = r.uniform(0.0, 1.0, (n, length))
    first = r.integers(0, max(1, length // 10), n)
    second = r.integers(length // 2, length, n)
    rows = np.arange(n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (x[rows, first, 0] + x[rows, second, 0]).reshape(n, 1).astype(np.float32)
    return x, y


def build(cell, units, seed):
    nv.manual_seed(seed)
    layer = getattr(nv.layers, cell)(units)
    model = nv.Sequential([layer, nv.layers.Dense(1)], input_dim=2)
    # Clipping keeps the occasional exploding step of a plain RNN from
    # ending its run in NaN (the other half of the same story).
    model.compile(optimizer=nv.optimizers.Adam(lr=3e-3, clipnorm=1.0), loss="mse")
    return model


def input_grad_per_step(model, x, y):
    """|| d loss / d x_t ||, averaged over the batch, for every step t."""
    out = model.forward(x, training=True)
    dx = model.backward(nv.losses.get("mse").backward(out, y), return_input_grad=True)
    return np.linalg.norm(dx, axis=2).mean(axis=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=60)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".", help="folder for sequences_adding.png")
    args = ap.parse_args(argv)

    x, y = adding_problem(args.train, args.length, args.seed)
    xv, yv = adding_problem(1000, args.length, args.seed + 1)
    print(f"adding problem, length {args.length}: mean-prediction MSE {float(np.mean((yv - 1.0) ** 2)):.3f}")
    curves, grads = {}, {}
    for cell in CELLS:
        model = build(cell, args.units, args.seed)
        t0 = time.perf_counter()
        hist = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, validation_data=(xv, yv),
                         verbose=0)
        curves[cell] = hist.history["val_loss"]
        grads[cell] = input_grad_per_step(model, xv[:256], yv[:256])
        print(f"{cell:9s} val MSE by epoch: " + " ".join(f"{v:.3f}" for v in curves[cell])
              + f"   ({time.perf_counter() - t0:.1f} s)")
    print("\n|d loss / d x_t| at steps 0, L/4, L/2, 3L/4, L-1 (after training):")
    picks = [0, args.length // 4, args.length // 2, 3 * args.length // 4, args.length - 1]
    for cell in CELLS:
        g = grads[cell]
        print(f"{cell:9s} " + " ".join(f"{g[t]:.2e}" for t in picks)
              + f"   first/last {g[0] / max(g[-1], 1e-30):.1e}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'nerve[plots]')", file=sys.stderr)
        return curves, grads
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for cell in CELLS:
        a.plot(range(1, len(curves[cell]) + 1), curves[cell], marker="o", label=cell)
        b.semilogy(grads[cell], label=cell)
    a.axhline(float(np.mean((yv - 1.0) ** 2)), color="grey", ls="--", label="predict the mean")
    a.set(xlabel="epoch", ylabel="validation MSE", title=f"adding problem, {args.length} steps")
    a.set_ylim(0, 0.25)
    a.legend()
    b.set(xlabel="time step t", ylabel="|d loss / d x_t|", title="gradient reaching each input step")
    b.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "sequences_adding.png")
    fig.savefig(path, dpi=110)
    print(f"saved {path}")
    return curves, grads


if __name__ == "__main__":
    main()
