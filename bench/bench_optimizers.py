"""Optimizer step throughput: nerve's fused kernels vs torch.optim, against
the memory bandwidth of a triad measured in the same run.

For each optimizer and size (default 0.5M and 10M parameters, one tensor) and
each thread count (default 1 and 2, the same for nerve and torch), times
``opt.step()`` (nerve: one nv.Parameter, a single C++ call; torch: one
tensor, ``fused=True`` where PyTorch has a fused CPU kernel -- SGD, Adagrad,
Adam, AdamW -- and ``foreach=True`` otherwise). Rounds interleave the
implementations (nerve, torch, nerve, torch, ...) so that drifting machine
load hits both alike; the reported figure is the median over rounds of the
mean step time within a round.

Bandwidth counts the bytes the update must move per element: every array it
reads (parameter, gradient, each state slot) and writes (parameter, each
slot), 4 bytes each; write-allocate traffic is not counted (the usual
"effective bandwidth"). The triad a = b + s·c counts 12 bytes per element. It
is measured two ways: numpy (``np.multiply(c, s, out=a); a += b``, best of
several at the start: two passes, single-threaded, so it understates the
hardware) and, when torch is importable, ``torch.add(b, c, alpha=s, out=a)``
(one pass, threaded like the optimizers) timed *inside* every interleaved
round of every row, so that the "% of triad" column compares figures taken
under the same machine load (it falls back to the numpy figure without torch).

    python bench/bench_optimizers.py                       # table + bench/results/optimizers.json
    python bench/bench_optimizers.py --sizes 500000 --threads 1 --rounds 5
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import nerve as nv

try:
    import torch
except ImportError:  # the nerve columns and the numpy triad still work
    torch = None

# name -> (nerve class, nerve kwargs, torch kwargs, floats moved per element)
# floats moved = p read + p write + g read + 2 per state slot (read + write).
OPTIMIZERS = {
    "SGD (momentum 0.9)": ("SGD", dict(lr=1e-3, momentum=0.9), dict(lr=1e-3, momentum=0.9), 5),
    "Adagrad": ("Adagrad", dict(lr=1e-3), dict(lr=1e-3), 5),
    "RMSprop": ("RMSprop", dict(lr=1e-3), dict(lr=1e-3), 5),
    "RMSprop (centered, momentum)": ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True),
                                     dict(lr=1e-3, momentum=0.9, centered=True), 9),
    "Adadelta": ("Adadelta", dict(), dict(), 7),
    "Adam": ("Adam", dict(lr=1e-3), dict(lr=1e-3), 7),
    "Adam (amsgrad)": ("Adam", dict(lr=1e-3, amsgrad=True), dict(lr=1e-3, amsgrad=True), 9),
    "AdamW": ("AdamW", dict(lr=1e-3), dict(lr=1e-3), 7),
    "Adamax": ("Adamax", dict(), dict(), 7),
    "NAdam": ("NAdam", dict(), dict(), 7),
    "Ftrl": ("Ftrl", dict(lr=1e-3, l1_regularization_strength=1e-4), None, 7),
}
TORCH_FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}  # fused CPU kernels in torch.optim


def set_threads(n):
    nv.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def time_steps(step, k):
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - t0) / k


def triad(n, rounds, threads):
    """Best-of-rounds bandwidth (GB/s) of a = b + s·c: numpy and torch."""
    r = np.random.default_rng(0)
    b = r.standard_normal(n, dtype=np.float32)
    c = r.standard_normal(n, dtype=np.float32)
    a = np.empty_like(b)
    s = np.float32(1.0001)

    def np_triad():
        np.multiply(c, s, out=a)
        a.__iadd__(b)

    out = {"numpy": 12 * n / min(time_steps(np_triad, 3) for _ in range(rounds)) / 1e9}
    if torch is not None:
        set_threads(threads)
        tb, tc, ta = torch.from_numpy(b), torch.from_numpy(c), torch.from_numpy(a)
        out["torch"] = 12 * n / min(time_steps(lambda: torch.add(tb, tc, alpha=1.0001, out=ta), 3)
                                    for _ in range(rounds)) / 1e9
    return out


def bench_one(label, n, threads, rounds, k):
    cls, nkw, tkw, floats = OPTIMIZERS[label]
    r = np.random.default_rng(1)
    init = r.standard_normal(n, dtype=np.float32) * 0.1
    grad = r.standard_normal(n, dtype=np.float32) * 0.01
    p = nv.Parameter(init)
    p.grad[...] = grad
    opt = getattr(nv.optimizers, cls)([p], **nkw)
    runners = {"nerve": opt.step}
    mode = None
    if torch is not None and tkw is not None:
        tp = torch.nn.Parameter(torch.from_numpy(init.copy()))
        tp.grad = torch.from_numpy(grad.copy())
        mode = "fused" if cls in TORCH_FUSED else "foreach"
        topt = getattr(torch.optim, cls)([tp], **tkw, **{mode: True})
        runners["torch"] = topt.step
    tri_n = 10_000_000
    if torch is not None:
        tb, tc, ta = (torch.from_numpy(r.standard_normal(tri_n, dtype=np.float32)) for _ in range(3))
        runners["triad"] = lambda: torch.add(tb, tc, alpha=1.0001, out=ta)
    set_threads(threads)
    for run in runners.values():  # warm-up: state allocation, first touch, thread pools
        time_steps(run, 2)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(time_steps(run, k if name != "triad" else 1))
    res = {"optimizer": label, "params": n, "threads": threads, "bytes_per_param": 4 * floats,
           "torch_mode": mode}
    if "triad" in times:
        tts = times.pop("triad")
        res["triad_gbps"] = 12 * tri_n / statistics.median(tts) / 1e9
    for name, ts in times.items():
        med = statistics.median(ts)
        res[f"{name}_ns_per_param"] = med / n * 1e9
        res[f"{name}_gbps"] = 4 * floats * n / med / 1e9
        res[f"{name}_step_ms"] = med * 1e3
        res[f"{name}_step_ms_min"] = min(ts) * 1e3
    if "torch" in times:
        res["speedup_vs_torch"] = res["torch_ns_per_param"] / res["nerve_ns_per_param"]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500_000, 10_000_000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS), metavar="NAME")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "optimizers.json"))
    args = ap.parse_args(argv)

    results, triads = [], {}
    for threads in args.threads:
        triads[threads] = triad(10_000_000, args.rounds, threads)
    for n in args.sizes:
        k = max(2, int(round(20_000_000 / n)))  # steps per round: ~10-40 ms of work at 10M, more at 0.5M
        for threads in args.threads:
            for label in args.optimizers:
                res = bench_one(label, n, threads, args.rounds, k)
                res.setdefault("triad_gbps", triads[threads]["numpy"])
                res["nerve_pct_triad"] = 100 * res["nerve_gbps"] / res["triad_gbps"]
                results.append(res)
                print(f"  {label:30s} n={n:>9,d} threads={threads}: nerve {res['nerve_ns_per_param']:.3f} ns/param"
                      + (f", torch {res['torch_ns_per_param']:.3f} ({res['torch_mode']})" if "torch_ns_per_param"
                         in res else ""), file=sys.stderr)

    info = nv.build_info()
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count(),
        "nerve": info.get("version"), "nerve_simd": info.get("simd_build"), "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "rounds": args.rounds, "triad_gbps": {str(t): v for t, v in triads.items()},
        "note": "bytes counted per element: reads + writes of p, g and state slots (4 B each); medians of "
                "interleaved rounds; triad_gbps per row: torch one-pass triad timed in the same rounds",
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    os.replace(tmp, args.json)

    print(f"{meta['processor']}, {meta['cpus']} CPUs; nerve {meta['nerve']} ({meta['nerve_simd']}), "
          f"torch {meta['torch']}, numpy {meta['numpy']}; median of {args.rounds} interleaved rounds\n")
    for t, tri in triads.items():
        rows = [r["triad_gbps"] for r in results if r["threads"] == t]
        print(f"triad a = b + s*c on 10M floats, {t} thread(s): best of {args.rounds} at the start: "
              + ", ".join(f"{k} {v:.1f} GB/s" for k, v in tri.items())
              + (f"; torch triad within the rounds, median over rows: {statistics.median(rows):.1f} GB/s"
                 if torch is not None and rows else ""))
    print()
    print("| optimizer | params | threads | B/param | nerve ns/param | nerve GB/s | triad GB/s | % of triad | "
          "torch ns/param | torch GB/s | torch mode | nerve speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        tcols = (f"{r['torch_ns_per_param']:.3f} | {r['torch_gbps']:.1f} | {r['torch_mode']} | "
                 f"{r['speedup_vs_torch']:.2f}x" if "torch_ns_per_param" in r else "- | - | - | -")
        print(f"| {r['optimizer']} | {r['params'] / 1e6:g}M | {r['threads']} | {r['bytes_per_param']} | "
              f"{r['nerve_ns_per_param']:.3f} | {r['nerve_gbps']:.1f} | {r['triad_gbps']:.1f} | "
              f"{r['nerve_pct_triad']:.0f}% | {tcols} |")
    print(f"\nwrote {args.json}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
