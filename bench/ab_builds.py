"""A/B of two builds of nerve on the whole training step.

Each build is a directory holding a `nerve` package (its Python files and
its `_core` module), e.g. a copy of python/ made before a change. Each side
times `model.train_step` on a pool of 11 batches (as train_mlp.py cycles its
batches). Two ways to alternate them:

- pairs (default): fresh processes alternating A, B, A, B, ...; each times 5
  rounds of ~0.1 s and reports its best and median round in µs per step.
  Prints every pair and the median over pairs of B's time / A's time (< 1: B
  is faster).
- `--bursts N`: one long-lived process per build, handed N pairs of short
  bursts (~`--burst-ms` each, after one untimed step) in the order A B, B A,
  A B, ... A shared host's noise comes and goes over seconds (bench/README.md
  saw the same step swing ±50% within minutes), so 5 pairs of whole seconds
  rarely decide a 2-5% lever; hundreds of pairs of 50 ms bursts put both
  builds under the same noise within each pair. The idle process sleeps
  between its bursts (a pause of `--gap-ms` lets its OpenMP workers stop
  spinning before the other runs). Prints the median of the per-pair ratios
  B / A with a distribution-free 95% interval (order statistics of the
  ratios) and how many pairs B won.

Run: python bench/ab_builds.py OLD_DIR NEW_DIR [--model ref|deep] [--batch 512]
     [--threads 2] [--pairs 5 | --bursts 200 [--burst-ms 50] [--gap-ms 20]]
     [--env-b NAME=VALUE ...]   (a setting's A/B: the same build twice)
"""
import argparse
import fractions
import math
import os
import statistics
import subprocess
import sys
import time

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
if len(sys.argv) > 4 and sys.argv[4] == "serve":
    # One burst per line read: "n" -> one untimed step, then n timed ones;
    # replies with µs per step. The end of input ends it.
    k = 0
    for line in sys.stdin:
        n = int(line)
        m.train_step(xs[k % pool], ys[k % pool])
        t0 = time.perf_counter()
        for i in range(n):
            m.train_step(xs[(k + i) % pool], ys[(k + i) % pool])
        k += n + 1
        print((time.perf_counter() - t0) / n * 1e6, flush=True)
    sys.exit(0)
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


def child_cmd(build, args, *extra, side="a"):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(build))
    if side == "b":
        env.update(kv.split("=", 1) for kv in args.env_b)
    return [sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.threads), *extra], env


def run(build, args, side):
    cmd, env = child_cmd(build, args, side=side)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def median_interval(values, confidence=0.95):
    """Distribution-free interval for the median: sorted values (lo, hi) at
    the ranks j, n + 1 - j with j the largest rank for which a Binomial(n,
    1/2) falls below j with probability <= (1 - confidence) / 2. None for
    too few values (n < 6 at 95%)."""
    v, n = sorted(values), len(values)
    # In integers: 2^n P(X <= j) against 2^n (1 - confidence) / 2, exact for any n.
    bound = fractions.Fraction(1.0 - confidence) / 2 * 2 ** n
    j, count = 0, 1  # count = 2^n P(X <= j)
    while j < n // 2 and count <= bound:
        j += 1
        count += math.comb(n, j)
    return None if j == 0 else (v[j - 1], v[n - j])


class Server:
    """One build's long-lived child, timing bursts on request."""

    def __init__(self, build, args, side):
        cmd, env = child_cmd(build, args, "serve", side=side)
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def burst(self, steps):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the child exited (status {self.proc.wait()})")
        return float(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def run_bursts(args):
    a, b = Server(args.a, args, "a"), Server(args.b, args, "b")
    try:
        # Steps per burst from a second burst of each (the first after
        # start-up runs cold): ~burst_ms on the slower.
        a.burst(2), b.burst(2)
        per = max(a.burst(3), b.burst(3))
        steps = max(1, round(args.burst_ms * 1e3 / per))
        ta, tb = [], []
        for i in range(args.bursts):
            order = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
            for server, out in order:
                time.sleep(args.gap_ms / 1e3)
                out.append(server.burst(steps))
    finally:
        a.close()
        b.close()
    ratios = [y / x for x, y in zip(ta, tb)]
    iv = median_interval(ratios)
    print(f"model {args.model}, batch {args.batch}, {args.threads} thread(s); {args.bursts} pairs of "
          f"{steps}-step bursts (A B, B A, ...)")
    print(f"A: median {statistics.median(ta):.0f} µs/step (best {min(ta):.0f}); "
          f"B: median {statistics.median(tb):.0f} µs/step (best {min(tb):.0f})")
    ci = f", 95% interval {iv[0]:.3f}-{iv[1]:.3f}" if iv else ""
    print(f"median B / A: {statistics.median(ratios):.3f}{ci}; B faster in {sum(r < 1 for r in ratios)} "
          f"of {len(ratios)} pairs")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="directory holding build A's nerve package")
    p.add_argument("b", help="directory holding build B's nerve package")
    p.add_argument("--model", choices=["ref", "deep"], default="ref")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=5, help="pairs of fresh processes (default mode)")
    p.add_argument("--bursts", type=int, default=0, help="pairs of bursts in two long-lived processes instead")
    p.add_argument("--burst-ms", type=float, default=50.0)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE",
                   help="set in B's environment only (A/B of a setting: give one build twice)")
    args = p.parse_args(argv)
    for kv in args.env_b:
        if "=" not in kv:
            p.error(f"--env-b takes NAME=VALUE, got {kv!r}")
    if args.bursts:
        return run_bursts(args)
    print(f"model {args.model}, batch {args.batch}, {args.threads} thread(s); µs per step, best / median of 5 rounds")
    print("| pair | A best | A median | B best | B median | B / A (best) |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for i in range(args.pairs):
        a, b = run(args.a, args, "a"), run(args.b, args, "b")
        ratios.append(b[0] / a[0])
        print(f"| {i + 1} | {a[0]:.0f} | {a[1]:.0f} | {b[0]:.0f} | {b[1]:.0f} | {ratios[-1]:.3f} |")
    faster = sum(r < 1 for r in ratios)
    print(f"\nmedian B / A: {statistics.median(ratios):.3f}; B faster in {faster} of {len(ratios)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
