"""A/B of two builds of nerve on the whole training step.

Each build is a directory holding a `nerve` package (its Python files and
its `_core` module), e.g. a copy of python/ made before a change. The two
run in fresh processes, alternating A, B, A, B, ... (a neighbour on a shared
host then hits both alike); each process times `model.train_step` on a pool
of 11 batches (as train_mlp.py cycles its batches) in 5 rounds of ~0.1 s and
reports its best and median round in µs per step. Prints every pair and the
median over pairs of B's time / A's time (< 1: B is faster).

Run: python bench/ab_builds.py OLD_DIR NEW_DIR [--model ref|deep] [--batch 512]
     [--threads 2] [--pairs 5]
"""
import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import glob, os, sys
# An editable install (pip install -e) puts an import hook ahead of
# PYTHONPATH, so both builds would import the installed nerve: drop it when
# this build holds its own compiled module.
if glob.glob(os.path.join(os.environ["PYTHONPATH"], "nerve", "_core*")):
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import time, statistics, numpy as np, nerve as nv
model, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nv.set_num_threads(threads)
sizes = {"ref": [512, 256, 10], "deep": [128] * 20 + [10]}[model]
nv.manual_seed(0)
m = nv.Sequential([nv.layers.Dense(u, activation="relu" if i < len(sizes) - 1 else None)
                   for i, u in enumerate(sizes)], input_dim=784)
m.compile(optimizer=nv.optimizers.Adam(lr=1e-4), loss="cross_entropy")
r = np.random.default_rng(0)
pool = 11
xs = [r.standard_normal((batch, 784)).astype(np.float32) for _ in range(pool)]
ys = [r.integers(0, 10, batch) for _ in range(pool)]
for i in range(20):
    m.train_step(xs[i % pool], ys[i % pool])
t0, k = time.perf_counter(), 0
while time.perf_counter() - t0 < 0.1:
    m.train_step(xs[k % pool], ys[k % pool])
    k += 1
n = max(10, k)
rounds = []
for _ in range(5):
    t0 = time.perf_counter()
    for i in range(n):
        m.train_step(xs[i % pool], ys[i % pool])
    rounds.append((time.perf_counter() - t0) / n * 1e6)
print(min(rounds), statistics.median(rounds))
"""


def run(build, args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(build))
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.threads)],
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="directory holding build A's nerve package")
    p.add_argument("b", help="directory holding build B's nerve package")
    p.add_argument("--model", choices=["ref", "deep"], default="ref")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=5)
    args = p.parse_args(argv)
    print(f"model {args.model}, batch {args.batch}, {args.threads} thread(s); µs per step, best / median of 5 rounds")
    print("| pair | A best | A median | B best | B median | B / A (best) |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for i in range(args.pairs):
        a, b = run(args.a, args), run(args.b, args)
        ratios.append(b[0] / a[0])
        print(f"| {i + 1} | {a[0]:.0f} | {a[1]:.0f} | {b[0]:.0f} | {b[1]:.0f} | {ratios[-1]:.3f} |")
    faster = sum(r < 1 for r in ratios)
    print(f"\nmedian B / A: {statistics.median(ratios):.3f}; B faster in {faster} of {len(ratios)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
