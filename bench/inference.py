"""Inference: nerve's dense predict and optimize_for_inference() against
onnxruntime and torch.inference_mode on the same model, interleaved.

The reference MLP 784-512-256-10 (ReLU), magnitude-pruned to --sparsity of
its kernel weights (nv.pruning, per layer), so all four run the same
weights: nerve ``model.predict`` (dense kernels), nerve
``model.optimize_for_inference().predict`` (sparse kernels above the
threshold), onnxruntime on ``nv.onnx.export`` of the model, and the
``nv.interop.to_torch`` network under ``torch.inference_mode()``. Each
round times every contender in turn (rotating who goes first) for
--seconds, and takes the median call; figures are medians over --rounds
rounds, ratios medians of the per-round ratios (same-run ratios: the
machine is shared, so absolute times move between runs).

    PYTHONPATH=python python3 bench/inference.py --threads 1,2 --json bench/results/inference.json

Needs onnxruntime and torch (pip install ".[onnx,bench]"); either missing
is left out of the table.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

BATCHES = [1, 4, 16, 64, 256, 1024, 2048]


def build(sparsity, seed=0):
    import nerve as nv

    nv.manual_seed(seed)
    model = nv.Sequential([nv.layers.Dense(512, activation="relu", kernel_initializer="he_normal"),
                           nv.layers.Dense(256, activation="relu", kernel_initializer="he_normal"),
                           nv.layers.Dense(10)], input_dim=784)
    if sparsity > 0:
        nv.pruning.prune_magnitude(model, sparsity)
    return model


def median_call(fn, seconds, min_calls=3):
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def contenders(model, threads):
    import nerve as nv

    nv.set_num_threads(threads)
    fast = model.optimize_for_inference()
    out = {"nerve": lambda x: model.predict(x, batch_size=len(x)),
           "nerve_opt": lambda x: fast.predict(x, batch_size=len(x))}
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(nv.onnx.to_onnx(model).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda x: sess.run(None, {"input": x})[0]
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
        net = nv.interop.to_torch(model)

        def run_torch(x, net=net):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        out["torch"] = run_torch
    except ImportError:
        pass
    return out, fast


def run(args):
    import nerve as nv

    model = build(args.sparsity)
    rows = []
    rng = np.random.default_rng(0)
    for threads in args.threads:
        fns, fast = contenders(model, threads)
        names = list(fns)
        for batch in args.batches:
            x = rng.standard_normal((batch, 784)).astype(np.float32)
            ref = model.predict(x, batch_size=batch)
            for name, fn in fns.items():  # same model everywhere: check, and warm up
                got = np.asarray(fn(x))
                err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
                if err > 1e-4:
                    raise SystemExit(f"{name} disagrees with nerve predict at batch {batch}: {err:.2e}")
            per_round = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    per_round[name].append(median_call(lambda: fns[name](x), args.seconds))
            row = {"threads": threads, "batch": batch,
                   "us": {n: statistics.median(v) * 1e6 for n, v in per_round.items()}}
            ratios = {}
            for peer in ("onnxruntime", "torch"):
                if peer in per_round:  # > 1: nerve dense predict is faster
                    ratios[f"nerve_vs_{peer}"] = statistics.median(
                        p / n for p, n in zip(per_round[peer], per_round["nerve"]))
                    ratios[f"opt_vs_{peer}"] = statistics.median(
                        p / n for p, n in zip(per_round[peer], per_round["nerve_opt"]))
            ratios["opt_vs_nerve"] = statistics.median(
                d / o for d, o in zip(per_round["nerve"], per_round["nerve_opt"]))
            row["ratios"] = ratios
            rows.append(row)
            print(format_row(row), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "nerve": nv.build_info(), "sparsity": args.sparsity, "rounds": args.rounds,
            "seconds": args.seconds, "sparse_layers": fast.report["sparse"],
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return {"info": info, "rows": rows}


HEADER = ("| threads | batch | nerve predict µs | optimized µs | onnxruntime µs | torch µs | "
          "nerve / ORT | optimized / dense | optimized / ORT | nerve / torch |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def format_row(row):
    us, r = row["us"], row["ratios"]
    f = lambda k: f"{us[k]:,.1f}" if k in us else "–"  # noqa: E731
    g = lambda k: f"**{r[k]:.2f}×**" if k in r else "–"  # noqa: E731
    return (f"| {row['threads']} | {row['batch']} | {f('nerve')} | {f('nerve_opt')} | {f('onnxruntime')} | "
            f"{f('torch')} | {g('nerve_vs_onnxruntime')} | {g('opt_vs_nerve')} | {g('opt_vs_onnxruntime')} | "
            f"{g('nerve_vs_torch')} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", type=lambda s: [int(t) for t in s.split(",")])
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   type=lambda s: [int(t) for t in s.split(",")])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.05, help="time per contender per round")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    print(f"784-512-256-10 ReLU, {args.sparsity:.0%} of kernel weights pruned; times are medians; "
          f"ratios > 1 mean the first named is faster (same-run)")
    print(HEADER)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
