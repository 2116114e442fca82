"""Fused Adam: nerve's one-pass kernel against PyTorch's Adam(fused=True), and against triad.

One optimizer step over the parameters of the reference MLP (784-512-256-10:
0.54M parameters in 6 tensors, cache-resident) and over one 10M tensor
(memory-bound), at 1 and 2 threads, interleaved in one process, medians of
rounds. GB/s counts Adam's compulsory traffic: read p, g, m, v and write p, m,
v = 28 bytes per parameter. The triad reference (a = b + s*c, 12 B/elem) comes
from the Google Benchmark binary when built (bench/README.md), at the same
working-set size; otherwise numpy's copy.

Run: python bench/optimizer_step.py [--threads 1,2] [--json bench/results/optimizer_step.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np

SETS = {
    "ref MLP 0.54M": [(784, 512), (512,), (512, 256), (256,), (256, 10), (10,)],
    "10M": [(10_000_000,)],
}


def _time(fn, seconds):
    fn()
    t0 = time.perf_counter()
    fn()
    per = max(time.perf_counter() - t0, 1e-7)
    k = max(3, int(seconds / per))
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def triad_cpp(binary, floats):
    """Single-thread triad GB/s at the size closest to `floats` from bench_kernels."""
    out = subprocess.run([binary, "--benchmark_filter=BM_triad/", "--benchmark_format=json",
                          "--benchmark_min_time=0.2"], capture_output=True, text=True, check=True)
    runs = json.loads(out.stdout)["benchmarks"]
    best = min(runs, key=lambda b: abs(np.log(int(b["run_name"].split("/")[1]) / floats)))
    return best["bytes/s"] / 1e9, int(best["run_name"].split("/")[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import nerve as nv

    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    for t in [int(v) for v in a.threads.split(",")]:
        nv.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        for name, shapes in SETS.items():
            r = np.random.default_rng(0)
            vals = [r.uniform(-0.1, 0.1, s).astype(np.float32) for s in shapes]
            grads = [r.uniform(-1e-2, 1e-2, s).astype(np.float32) for s in shapes]
            n = sum(v.size for v in vals)
            params = [nv.Parameter(v) for v in vals]
            for prm, g in zip(params, grads):
                prm.grad = g
            nopt = nv.optimizers.Adam(params, lr=1e-6)
            runners = {"nerve": nopt.step}
            if torch is not None:
                tps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in vals]
                for tp, g in zip(tps, grads):
                    tp.grad = torch.from_numpy(g.copy())
                topt = torch.optim.Adam(tps, lr=1e-6, fused=True)
                tfor = torch.optim.Adam(tps, lr=1e-6, foreach=True)
                runners["torch_fused"] = topt.step
                runners["torch_foreach"] = tfor.step
            times = {k: [] for k in runners}
            for rnd in range(a.rounds):
                order = list(runners) if rnd % 2 == 0 else list(runners)[::-1]
                for k in order:
                    times[k].append(_time(runners[k], a.seconds))
            row = {"threads": t, "set": name, "params": n}
            for k, v in times.items():
                row[f"{k}_us"] = statistics.median(v) * 1e6
                row[f"{k}_GBps"] = 28.0 * n / statistics.median(v) / 1e9
            if torch is not None:
                row["ratio_vs_fused"] = statistics.median(
                    [b / x for x, b in zip(times["nerve"], times["torch_fused"])])
            rows.append(row)
            print(f"threads={t} {name}: nerve {row['nerve_us']:.0f} us ({row['nerve_GBps']:.1f} GB/s)"
                  + (f", torch fused {row['torch_fused_us']:.0f} us, ratio {row['ratio_vs_fused']:.2f}x"
                     if torch is not None else ""))
    here = os.path.dirname(os.path.abspath(__file__))
    binary = None
    for cand in ("build/dev/bench/bench_kernels", "build/bench/bench/bench_kernels"):
        if os.path.exists(os.path.join(os.path.dirname(here), cand)):
            binary = os.path.join(os.path.dirname(here), cand)
    triad = {}
    if binary:
        for name, shapes in SETS.items():
            n = sum(int(np.prod(s)) for s in shapes)
            triad[name] = triad_cpp(binary, n)
    print()
    print("| threads | parameters | nerve Adam µs | nerve GB/s | PyTorch fused µs | PyTorch foreach µs | nerve / fused | nerve GB/s / triad GB/s (1 thread) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tri = triad.get(r["set"])
        tri_s = f"{r['nerve_GBps'] / tri[0]:.0%} of {tri[0]:.1f} (triad on {tri[1]:,} floats)" if tri and r["threads"] == 1 else "–"
        if torch is not None:
            print(f"| {r['threads']} | {r['set']} | {r['nerve_us']:.0f} | {r['nerve_GBps']:.1f} | {r['torch_fused_us']:.0f} | "
                  f"{r['torch_foreach_us']:.0f} | **{r['ratio_vs_fused']:.2f}×** | {tri_s} |")
        else:
            print(f"| {r['threads']} | {r['set']} | {r['nerve_us']:.0f} | {r['nerve_GBps']:.1f} | – | – | – | {tri_s} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "triad": triad}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
