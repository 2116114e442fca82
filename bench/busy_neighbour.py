"""Threads on a busy machine: training steps while another process spins on a core.

On a machine whose cores are shared (another job, GridSearchCV(n_jobs=cores),
a cloud neighbour), a worker thread is often off the CPU when a parallel loop
starts; the loop's barrier then waits for the scheduler. This benchmark starts
`--neighbours` processes that spin (pure Python loops), then measures training
steps of the reference MLP, interleaved in rounds:

- nerve on 1 thread, on all threads with the oversubscription guard
  (nv.set_adaptive_threads, the default) and on all threads without it;
- PyTorch eager on 1 and on all threads (with --against torch).

It prints samples/s (medians over rounds) and each configuration's speed over
the same framework's 1-thread speed in the same round; 1.0x or more means that
using the threads did not cost anything. --neighbours 0 gives the quiet
baseline.

    python bench/busy_neighbour.py [--against torch] [--batches 32,128,512] [--neighbours 1]
                                   [--no-unguarded]

Turning the guard off for the no-guard column and on again resets it, so
each guard cell starts with the team and pays for finding the stall again;
--no-unguarded leaves that column out and shows what a long run sees.
"""
import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from nerve import benchmark  # noqa: E402


def _spin(stop):
    while not stop.is_set():
        for _ in range(100000):
            pass


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", choices=["torch"], default=None)
    p.add_argument("--batches", default="32,128,512")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--neighbours", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--no-unguarded", action="store_true",
                   help="leave out the no-guard column: the guard is then never turned off and on "
                        "between cells, so its cells do not each start by finding the stall again "
                        "(a long run's view)")
    a = p.parse_args(argv)

    import nerve as nv

    torch = None
    if a.against == "torch":
        import torch
    sizes = benchmark.MODELS["ref"]
    weights = benchmark._init_weights(sizes)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(a.neighbours)]
    for s in spinners:
        s.start()
    time.sleep(0.5)
    rows = []
    try:
        for batch in [int(b) for b in a.batches.split(",")]:
            r = np.random.default_rng(batch)
            xs = [r.standard_normal((batch, sizes[0])).astype(np.float32) for _ in range(8)]
            ys = [r.integers(0, sizes[-1], batch).astype(np.int64) for _ in range(8)]
            model = benchmark._nerve_model(sizes, weights, 1e-4)

            def nerve_cfg(threads, adaptive):
                def go(k):
                    nv.set_num_threads(threads)
                    nv.set_adaptive_threads(adaptive)
                    t0 = time.perf_counter()
                    for i in range(k):
                        model.train_step(xs[i % 8], ys[i % 8])
                    return time.perf_counter() - t0
                return go

            cfgs = {"nerve 1T": nerve_cfg(1, True),
                    f"nerve {a.threads}T guard": nerve_cfg(a.threads, True)}
            if not a.no_unguarded:
                cfgs[f"nerve {a.threads}T no guard"] = nerve_cfg(a.threads, False)
            if torch is not None:
                tmodel, topt = benchmark._torch_model(sizes, weights, 1e-4, False)
                txs = [torch.from_numpy(x) for x in xs]
                tys = [torch.from_numpy(y) for y in ys]

                def torch_cfg(threads):
                    def go(k):
                        torch.set_num_threads(threads)
                        t0 = time.perf_counter()
                        for i in range(k):
                            topt.zero_grad(set_to_none=True)
                            torch.nn.functional.cross_entropy(tmodel(txs[i % 8]), tys[i % 8]).backward()
                            topt.step()
                        return time.perf_counter() - t0
                    return go

                cfgs["torch 1T"] = torch_cfg(1)
                cfgs[f"torch {a.threads}T"] = torch_cfg(a.threads)
            steps = {}
            for name, fn in cfgs.items():
                fn(2)
                steps[name] = max(3, int(a.seconds / max(fn(3) / 3, 1e-7)))
            rates = {name: [] for name in cfgs}
            for rnd in range(a.rounds):
                order = list(cfgs) if rnd % 2 == 0 else list(reversed(list(cfgs)))
                for name in order:
                    rates[name].append(steps[name] * batch / cfgs[name](steps[name]))
            for name in cfgs:
                base = "nerve 1T" if name.startswith("nerve") else "torch 1T"
                ratio = statistics.median(x / y for x, y in zip(rates[name], rates[base]))
                rows.append((batch, name, statistics.median(rates[name]), ratio))
                print(f"batch {batch} {name}: {rows[-1][2]:,.0f}/s, {ratio:.2f}x of 1 thread", flush=True)
    finally:
        stop.set()
        for s in spinners:
            s.join(timeout=2)
        nv.set_adaptive_threads(True)
    print()
    print(f"{a.neighbours} spinning neighbour(s) on {os.cpu_count()} cores; medians of {a.rounds} interleaved rounds")
    print("| batch | configuration | samples/s | over 1 thread, same round |")
    print("|---|---|---|---|")
    for batch, name, rate, ratio in rows:
        print(f"| {batch} | {name} | {rate:,.0f} | {ratio:.2f}× |")
    print(f"\nguard: {nv.thread_stats()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
