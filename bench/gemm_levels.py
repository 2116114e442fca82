"""nerve's GEMM at each CPU level against numpy's OpenBLAS, same-run ratios.

Each CPU level is its own extension module and a process loads only one, so
the levels run in alternating fresh processes (NERVE_CPU=avx2, then avx512,
then avx2 ...). Inside each process every shape is timed for nerve and for
numpy's matmul in the same process (all of nerve's first: best of 3 repeats
of ~0.1 s each), so the ratio nerve / OpenBLAS is a same-run figure; the avx512 / avx2 ratio pairs each
avx512 run with the avx2 run next to it. Medians over the rounds.

    python bench/gemm_levels.py --rounds 5 --threads 1
    python bench/gemm_levels.py --shapes "fwd b512 784x512,square 2048" --levels avx2,avx512
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(shapes_filter, threads):
    sys.path.insert(0, HERE)
    import numpy as np
    from threadpoolctl import threadpool_limits
    import nerve as nv
    from machine_limits import _best_rate, _operands, gemm_shapes

    nv.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {"level": nv.build_info()["cpu_level"], "shapes": {}}
    cases = []
    for label, M, K, N, ta, tb in gemm_shapes():
        if not shapes_filter or label in shapes_filter:
            a, b = _operands(M, K, N, ta, tb, rng)
            cases.append((label, a, b, ta, tb, np.empty((M, N), np.float32), 2.0 * M * N * K))
    # Every nerve product first, then every OpenBLAS one: OpenBLAS's threads
    # spin for a while after each call, and on 2 cores that spinning, timed
    # right before nerve, stalled nerve's workers and tripped its
    # oversubscription guard (nerve's 2-thread rates halved).
    r_nv = {lab: _best_rate(lambda: nv._core.gemm(a, b, c, ta, tb, False), w) / 1e9
            for lab, a, b, ta, tb, c, w in cases}
    with threadpool_limits(threads):
        for lab, a, b, ta, tb, c, w in cases:
            at, bt = (a.T if ta else a), (b.T if tb else b)
            out["shapes"][lab] = (r_nv[lab], _best_rate(lambda: np.matmul(at, bt, out=c), w) / 1e9)
    print(json.dumps(out))


def run_alternating(script, levels, rounds, threads, extra_args):
    """Runs `script --child --threads T extra_args` in fresh processes, one per
    level per round (NERVE_CPU=level; the order reversed every other round),
    each printing {"level": ..., "shapes": {...}} as JSON; returns
    {level: [shapes of each round]}."""
    runs = {lvl: [] for lvl in levels}
    for r in range(rounds):
        for lvl in (levels if r % 2 == 0 else levels[::-1]):
            env = dict(os.environ, NERVE_CPU=lvl, OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, script, "--child", "--threads", str(threads), *extra_args]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            assert res["level"] == lvl, res["level"]
            runs[lvl].append(res["shapes"])
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--levels", default="avx2,avx512")
    p.add_argument("--shapes", default="", help="comma-separated labels of machine_limits.gemm_shapes (default: all)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    if args.child:
        child(shapes, args.threads)
        return 0
    levels = args.levels.split(",")
    runs = run_alternating(__file__, levels, args.rounds, args.threads, ["--shapes", args.shapes])
    labels = list(runs[levels[0]][0])
    head = " | ".join(f"{lvl} GFLOP/s | {lvl}/OpenBLAS" for lvl in levels)
    print(f"threads {args.threads}, {args.rounds} rounds, medians")
    print(f"| shape | {head} | OpenBLAS GFLOP/s | {levels[-1]}/{levels[0]} |")
    print("|---" * (2 * len(levels) + 3) + "|")
    for lab in labels:
        cells = []
        for lvl in levels:
            cells.append(f"{statistics.median(x[lab][0] for x in runs[lvl]):.1f}")
            cells.append(f"{statistics.median(x[lab][0] / x[lab][1] for x in runs[lvl]):.3f}")
        blas = statistics.median(x[lab][1] for lvl in levels for x in runs[lvl])
        pair = statistics.median(hi[lab][0] / lo[lab][0] for lo, hi in zip(runs[levels[0]], runs[levels[-1]]))
        print(f"| {lab} | " + " | ".join(cells) + f" | {blas:.1f} | {pair:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
