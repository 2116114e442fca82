"""Lever: nv.set_flush_denormal(True) on a step whose Adam update meets
subnormal numbers.

784-512-256-10 with Adam trained on one fixed sample until its loss is 0:
the gradients fall to ~1e-20 and Adam's (1 - beta2) g^2 is subnormal. Each
mode runs in its own fresh process (the mode is per thread and sticks),
alternating, one thread; the time is the process CPU time per step, best of
5 rounds. Prints the per-pair ratio of off / on.

Run: PYTHONPATH=python python bench/flush_denormal.py [--pairs 3]
"""
import argparse
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, numpy as np, nerve as nv
nv.set_num_threads(1)
if sys.argv[1] == "on":
    assert nv.set_flush_denormal(True)
nv.manual_seed(0)
m = nv.Sequential([nv.layers.Dense(512, activation="relu"), nv.layers.Dense(256, activation="relu"),
                   nv.layers.Dense(10)], input_dim=784)
m.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
y = np.array([3])
for _ in range(3000):
    loss = m.train_step(x, y)
best = float("inf")
for _ in range(5):
    t0 = time.process_time()
    for _ in range(500):
        loss = m.train_step(x, y)
    best = min(best, (time.process_time() - t0) / 500)
print(best, loss)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    a = p.parse_args(argv)
    ratios = []
    print("| pair | flush off µs/step | flush on µs/step | off / on | final loss |")
    print("|---|---|---|---|---|")
    for k in range(a.pairs):
        t = {}
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
            step, loss = out.stdout.split()
            t[mode] = (float(step), float(loss))
        ratios.append(t["off"][0] / t["on"][0])
        print(f"| {k + 1} | {t['off'][0] * 1e6:.0f} | {t['on'][0] * 1e6:.0f} | {ratios[-1]:.2f}× | {t['on'][1]:.1e} |")
    print(f"\nmedian off / on: {statistics.median(ratios):.2f}×")


if __name__ == "__main__":
    main()
