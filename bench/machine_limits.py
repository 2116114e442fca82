"""The machine's own limits, measured in one run: sgemm GFLOP/s and memory bandwidth.

nerve's performance claims are ratios against these figures measured in the
same session (DESIGN.md, "Measured, not guessed"):

- sgemm GFLOP/s of numpy's BLAS and of PyTorch's (when installed) on the
  reference MLP's GEMM shapes (784-512-256-10 at batch 32/128/512/2048:
  forward X·W, dW = Xᵀ·dZ, dX = dZ·Wᵀ) and on a square 2048 product;
- triad (a = b + s·c, 12 bytes per element) and copy (8 bytes per element)
  GB/s on 10M+ floats with numpy, and with the tight C++ loops of the Google
  Benchmark binary when it is built (bench/README.md).

Each figure is the best of 3 repeats of ~0.1 s (a limit, not a typical value), at
1 and 2 threads (threadpoolctl limits numpy's BLAS; torch.set_num_threads).

Run: python bench/machine_limits.py [--threads 1,2] [--json bench/results/machine_limits.json]
"""
import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np

REF = [784, 512, 256, 10]
BATCHES = [32, 128, 512, 2048]


def gemm_shapes():
    """(label, M, K, N, transA, transB) of every GEMM of one training step of
    the reference MLP, plus the square 2048 product."""
    out = []
    for b in BATCHES:
        for i, (a, c) in enumerate(zip(REF, REF[1:])):
            out.append((f"fwd b{b} {a}x{c}", b, a, c, False, False))
            out.append((f"dW b{b} {a}x{c}", a, b, c, True, False))
            if i > 0:
                out.append((f"dX b{b} {a}x{c}", b, c, a, False, True))
    out.append(("square 2048", 2048, 2048, 2048, False, False))
    return out


def _best_rate(fn, work, seconds=0.1, repeats=3):
    """Best of `repeats` timings of `fn`, each repeated to last ~`seconds`; work/s."""
    fn()
    t0 = time.perf_counter()
    fn()
    per = max(time.perf_counter() - t0, 1e-7)
    k = max(1, int(seconds / per))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        best = min(best, (time.perf_counter() - t0) / k)
    return work / best


def _operands(M, K, N, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return a, b


def sgemm_numpy(shapes, rng):
    res = {}
    for label, M, K, N, ta, tb in shapes:
        a, b = _operands(M, K, N, ta, tb, rng)
        at, bt = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((M, N), np.float32)
        res[label] = _best_rate(lambda: np.matmul(at, bt, out=out), 2.0 * M * N * K) / 1e9
    return res


def sgemm_torch(shapes, rng):
    import torch

    res = {}
    with torch.no_grad():
        for label, M, K, N, ta, tb in shapes:
            a, b = _operands(M, K, N, ta, tb, rng)
            a, b = torch.from_numpy(a), torch.from_numpy(b)
            at, bt = (a.t() if ta else a), (b.t() if tb else b)
            out = torch.empty((M, N))
            res[label] = _best_rate(lambda: torch.mm(at, bt, out=out), 2.0 * M * N * K) / 1e9
    return res


def bandwidth_numpy(n):
    b = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    c = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    a = np.empty_like(b)
    s = np.float32(0.5)

    def triad():  # two passes in numpy (a = s*c; a += b): 20 B/elem really moved
        np.multiply(c, s, out=a)
        np.add(a, b, out=a)

    return {
        "copy": _best_rate(lambda: np.copyto(a, b), 8.0 * n) / 1e9,
        "triad_2pass": _best_rate(triad, 12.0 * n) / 1e9,
    }


def bandwidth_cpp(binary):
    """Copy/triad GB/s from the Google Benchmark binary (single thread; the
    triad_threads rows split the triad over 1 or 2 threads as the optimizers do)."""
    cmd = [binary, "--benchmark_filter=BM_(copy|memcpy|triad|triad_threads)/", "--benchmark_format=json",
           "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    res = {}
    for b in out["benchmarks"]:
        if b.get("aggregate_name") == "median":
            res[b["run_name"].replace("BM_", "").replace("/real_time", "")] = b["bytes/s"] / 1e9
    return res


def find_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in ("build/dev/bench/bench_kernels", "build/bench/bench/bench_kernels"):
        p = os.path.join(os.path.dirname(here), cand)
        if os.path.exists(p):
            return p
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--floats", type=int, default=16_000_000, help="array length of the bandwidth tests")
    p.add_argument("--binary", default=None, help="bench_kernels binary (default: looked up under build/)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_info, threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    shapes = gemm_shapes()
    threads = [int(t) for t in a.threads.split(",")]
    result = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "numpy": np.__version__, "threadpools": [
                  {k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "filepath")}
                  for d in threadpool_info()],
              "sgemm": {}, "bandwidth": {}}
    if torch is not None:
        result["torch"] = torch.__version__
    for t in threads:
        with threadpool_limits(limits=t):
            if torch is not None:
                torch.set_num_threads(t)
            result["sgemm"][f"numpy_t{t}"] = sgemm_numpy(shapes, rng)
            if torch is not None:
                result["sgemm"][f"torch_t{t}"] = sgemm_torch(shapes, rng)
            result["bandwidth"][f"numpy_t{t}"] = bandwidth_numpy(a.floats)
    binary = a.binary or find_binary()
    if binary:
        result["bandwidth"]["cpp_t1"] = bandwidth_cpp(binary)
        result["binary"] = binary
    # Best sgemm rate per thread count over all libraries and shapes: the
    # roof for the whole-step GFLOP/s of bench/train_mlp.py.
    result["best_sgemm"] = {f"t{t}": max(max(v.values()) for k, v in result["sgemm"].items()
                                         if k.endswith(f"_t{t}")) for t in threads}

    cols = list(result["sgemm"])
    print("sgemm GFLOP/s (best of 3)")
    print("| shape (M x K x N) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, M, K, N, _, _ in shapes:
        print(f"| {label} ({M}x{K}x{N}) | " + " | ".join(f"{result['sgemm'][c][label]:.1f}" for c in cols) + " |")
    print()
    print("bandwidth GB/s (numpy: best of 3; C++: median of 3; triad counts 12 B/elem, copy 8 B/elem;\n"
          "numpy's triad is two passes, a = s*c; a += b)")
    print("| source | test | GB/s |")
    print("|---|---|---|")
    for src, d in result["bandwidth"].items():
        for k, v in d.items():
            print(f"| {src} | {k} | {v:.1f} |")
    print()
    print("best sgemm: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in result["best_sgemm"].items()))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
