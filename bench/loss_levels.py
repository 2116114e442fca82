"""nerve's loss kernels (forward + backward) at each CPU level, same-run ratios.

The losses widen float inputs to double lanes (4 at avx2 as in the earlier
hand-written kernels, 8 per register at avx512, one at generic); this checks
that the avx512 level is not slower than avx2 on the shapes training meets.
Levels run in alternating fresh processes (as bench/gemm_levels.py); each
case is the best of 5 repeats of ~0.05 s, medians over rounds, and the
avx512/avx2 column pairs each avx512 run with the avx2 run beside it
(> 1: avx512 faster).

    python bench/loss_levels.py --rounds 5 --threads 1
"""
import argparse
import statistics
import sys
import time

from gemm_levels import run_alternating

CASES = [  # (label, loss name, params, rows, cols, target kind)
    ("cross_entropy 512x10", "cross_entropy", {}, 512, 10, "labels"),
    ("cross_entropy 128x10", "cross_entropy", {}, 128, 10, "labels"),
    ("cross_entropy 2048x10", "cross_entropy", {}, 2048, 10, "labels"),
    ("cross_entropy 512x100", "cross_entropy", {}, 512, 100, "labels"),
    ("cross_entropy(ls=0.1) 512x10", "cross_entropy", {"label_smoothing": 0.1}, 512, 10, "labels"),
    ("distillation 512x10", "distillation", {}, 512, 10, "teacher"),
    ("distillation 512x100", "distillation", {}, 512, 100, "teacher"),
    ("bce_with_logits 512x64", "binary_cross_entropy_with_logits", {}, 512, 64, "binary"),
    ("mse 512x784", "mse", {}, 512, 784, "values"),
    ("huber 512x64", "huber", {}, 512, 64, "values"),
]


def child(threads):
    import json

    import numpy as np

    import nerve as nv

    nv.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {"level": nv.build_info()["cpu_level"], "shapes": {}}
    for label, name, params, rows, cols, kind in CASES:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if kind == "labels":
            t = rng.integers(0, cols, rows)
        elif kind == "teacher":
            t = (rng.standard_normal((rows, cols)).astype(np.float32), rng.integers(0, cols, rows))
        elif kind == "binary":
            t = (rng.random((rows, cols)) > 0.5).astype(np.float32)
        else:
            t = rng.standard_normal((rows, cols)).astype(np.float32)
        loss = nv.losses.get(name, **params)
        loss.forward_backward(x, t)
        best = float("inf")
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.05:
                loss.forward_backward(x, t)
                n += 1
            best = min(best, (time.perf_counter() - t0) / n)
        out["shapes"][label] = best * 1e6
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--levels", default="generic,avx2,avx512")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.threads)
        return 0
    levels = args.levels.split(",")
    runs = run_alternating(__file__, levels, args.rounds, args.threads, [])
    print(f"threads {args.threads}, {args.rounds} rounds, median us per forward+backward")
    print("| case | " + " | ".join(levels) + f" | {levels[-1]}/{levels[-2]} (speed) |")
    print("|---" * (len(levels) + 2) + "|")
    for label, *_ in CASES:
        cells = [f"{statistics.median(r[label] for r in runs[lvl]):.1f}" for lvl in levels]
        pair = statistics.median(lo[label] / hi[label] for lo, hi in zip(runs[levels[-2]], runs[levels[-1]]))
        print(f"| {label} | " + " | ".join(cells) + f" | {pair:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
