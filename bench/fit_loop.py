"""Lever: fit's epoch loop in C++ (Network.train_batches: one Python -> C++ call
per epoch) against a Python loop calling model.train_step once per batch.

Same model (reference MLP 784-512-256-10, Adam, cross-entropy), same data,
interleaved rounds in one process, medians; samples/s and the per-step time
the Python crossing costs. With --clock cpu (default for 1 thread) the time is
the process's CPU time, which a busy machine disturbs far less than wall time.

Run: python bench/fit_loop.py [--batches 1,32,128] [--threads 1]
"""
import argparse
import statistics
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--clock", choices=["cpu", "wall"], default=None)
    a = p.parse_args(argv)
    import nerve as nv

    nv.set_num_threads(a.threads)
    clock = time.process_time if (a.clock or ("cpu" if a.threads == 1 else "wall")) == "cpu" else time.perf_counter
    r = np.random.default_rng(0)
    print(f"| batch | fit (C++ epoch loop) samples/s | Python loop of train_step samples/s | fit / loop | µs saved per step |")
    print("|---|---|---|---|---|")
    for batch in [int(b) for b in a.batches.split(",")]:
        rows = min(a.rows, 512 * batch) if batch > 1 else 1024
        x = r.standard_normal((rows, 784)).astype(np.float32)
        y = r.integers(0, 10, rows)
        m = nv.Sequential([nv.layers.Dense(512, activation="relu"), nv.layers.Dense(256, activation="relu"),
                           nv.layers.Dense(10)], input_dim=784)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-4), loss="cross_entropy")
        m.fit(x[:batch], y[:batch], epochs=1, batch_size=batch, verbose=0)
        xs = [x[i:i + batch] for i in range(0, rows, batch)]
        ys = [y[i:i + batch] for i in range(0, rows, batch)]

        def fit():
            t0 = clock()
            m.fit(x, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)
            return clock() - t0

        def loop():
            t0 = clock()
            for xb, yb in zip(xs, ys):
                m.train_step(xb, yb)
            return clock() - t0

        tf, tl = [], []
        for k in range(a.rounds):
            for name in (("fit", "loop") if k % 2 == 0 else ("loop", "fit")):
                (tf if name == "fit" else tl).append(fit() if name == "fit" else loop())
        f, lo = statistics.median(tf), statistics.median(tl)
        steps = len(xs)
        print(f"| {batch} | {rows / f:,.0f} | {rows / lo:,.0f} | **{lo / f:.2f}×** | {(lo - f) / steps * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
