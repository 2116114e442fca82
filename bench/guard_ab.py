"""The oversubscription guard on and off in one process, interleaved.

    python bench/guard_ab.py --model deep --batches 32,128,512,2048 --rounds 5

Each round times nerve on 1 thread, on 2 threads with the guard
(nv.set_adaptive_threads(True), its state reset) and on 2 threads without it,
for --seconds each; the table gives medians over rounds and the guard's stall
counts of the last round. On a quiet machine the two 2-thread columns should
agree: a guard that sends a quiet team's loops to one thread shows up as
"2T guard" near "1T".
"""
import argparse
import statistics
import time

import numpy as np

import nerve as nv
from nerve import _core
from nerve.benchmark import MODELS, _init_weights, _nerve_model


def rate(m, x, y, seconds):
    for _ in range(5):
        m.train_step(x, y)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        m.train_step(x, y)
        n += 1
    return len(x) * n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="deep")
    ap.add_argument("--batches", default="32,128,512,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.2)
    a = ap.parse_args(argv)
    sizes = MODELS[a.model]  # the models of bench/train_mlp.py
    m = _nerve_model(sizes, _init_weights(sizes), 1e-4)
    was_on = nv.get_adaptive_threads()
    r = np.random.default_rng(0)
    print("| batch | 1T samples/s | 2T guard | 2T no guard | guard stalls | slow windows | solo regions |")
    print("|---|---|---|---|---|---|---|")
    for b in (int(v) for v in a.batches.split(",")):
        x = r.standard_normal((b, sizes[0])).astype(np.float32)
        y = r.integers(0, sizes[-1], b)
        res = {"1T": [], "guard": [], "off": []}
        for _ in range(a.rounds):
            nv.set_num_threads(1)
            res["1T"].append(rate(m, x, y, a.seconds))
            nv.set_num_threads(2)
            nv.set_adaptive_threads(True)
            _core._reset_thread_guard()
            res["guard"].append(rate(m, x, y, a.seconds))
            st = nv.thread_stats()
            nv.set_adaptive_threads(False)
            res["off"].append(rate(m, x, y, a.seconds))
        nv.set_adaptive_threads(was_on)
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"| {b} | {med['1T']:,.0f} | {med['guard']:,.0f} | {med['off']:,.0f} | "
              f"{st['stalls']} | {st['slow_windows']} | {st['solo_regions']} |", flush=True)


if __name__ == "__main__":
    main()
