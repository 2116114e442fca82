"""Data-parallel training over MPI, measured on this machine and extrapolated.

    python bench/distributed.py --json bench/results/distributed.json --plot docs/distributed_scaling.png

Three parts (each rank count runs in its own mpiexec job; the driver is a
plain process that starts them):

1. Throughput of the reference MLP 784-512-256-10 (Adam, cross-entropy,
   random data): 2 ranks x 1 thread (fit(distributed=True), batch B/2 per
   rank) against 1 rank x 2 threads (plain fit, batch B), for global batch
   B = 512 and 2048; the two alternate, `--rounds` times, medians. Each job
   also records the time its steps spent in the allreduce.
2. MPI_Allreduce (in place, float32 sum) of 2^10 .. 2^24 floats between 2
   ranks on this node (MPICH: shared memory, the "loopback" of one machine):
   median time and bandwidth (bytes of the arena / time), and the ring model's
   (alpha, beta) fitted to those times.
3. A ring-allreduce cost model, T(p, n) = 2 (p - 1) alpha + 2 (p - 1) / p * 4n / beta
   + (p - 1) / p * 4n * gamma (gamma: the sum's cost per byte, from part 2's
   local fit), for 10 and 100 Gb/s and 5 and 50 us latency, with the step's
   compute time measured here (1 thread, per-node batch 256) for the reference
   MLP and a 10M-parameter MLP (784-4096-1664-10), scaled by an assumed node
   speed (`--node-speedup`, default 16: a node computes 16x one core here).
   Predicted weak-scaling speedup p * t_c / (t_c + T(p)) (no overlap of
   backward and allreduce) at 8, 64 and 256 nodes.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REF = [784, 512, 256, 10]
BIG = [784, 4096, 1664, 10]


def _mlp(sizes, seed=0):
    import nerve as nv

    nv.manual_seed(seed)
    layers = [nv.layers.Dense(u, activation="relu") for u in sizes[1:-1]] + [nv.layers.Dense(sizes[-1])]
    m = nv.Sequential(layers, input_dim=sizes[0])
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
    return m


def _data(rows, features=784, classes=10, seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((rows, features), dtype=np.float32), g.integers(0, classes, rows)


# -- workers (run under mpiexec) --------------------------------------------------------
def worker_fit(batch, ranks, epochs, rows_per_rank):
    import nerve.distributed as nvd

    distributed = ranks > 1
    if distributed:
        nvd.init()
        rank = nvd.rank()
    else:
        rank = 0
    per_rank = batch // ranks
    x, y = _data(rows_per_rank, seed=rank)
    m = _mlp(REF)
    reduce_time = [0.0]
    if distributed:
        orig = nvd._Trainer.reduce_gradients

        def timed(self):
            t = time.perf_counter()
            orig(self)
            reduce_time[0] += time.perf_counter() - t

        nvd._Trainer.reduce_gradients = timed
    m.fit(x, y, epochs=1, batch_size=per_rank, verbose=0, distributed=distributed)  # warm-up: plans buffers
    reduce_time[0] = 0.0
    if distributed:
        nvd.barrier()
    t0 = time.perf_counter()
    m.fit(x, y, epochs=epochs, batch_size=per_rank, verbose=0, distributed=distributed)
    if distributed:
        nvd.barrier()
    seconds = time.perf_counter() - t0
    steps = epochs * -(-rows_per_rank // per_rank)
    if rank == 0:
        print("RESULT " + json.dumps({"samples_per_sec": ranks * rows_per_rank * epochs / seconds,
                                      "step_ms": 1e3 * seconds / steps,
                                      "allreduce_ms_per_step": 1e3 * reduce_time[0] / steps}), flush=True)


def worker_allreduce(max_log2):
    import nerve.distributed as nvd
    from mpi4py import MPI

    c = nvd.init(threads=1)
    out = []
    for k in range(10, max_log2 + 1, 2):
        n = 1 << k
        buf = np.ones(n, np.float32)
        reps = max(5, min(200, int(2e8 // (n * 4))))
        times = []
        for _ in range(3):  # warm-up
            c.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        for _ in range(reps):
            c.Barrier()
            t = time.perf_counter()
            c.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        if c.Get_rank() == 0:
            out.append({"floats": n, "bytes": 4 * n, "median_us": 1e6 * med, "GB_per_s": 4 * n / med / 1e9})
    if c.Get_rank() == 0:
        # The local cost of the sum itself (gamma): a float32 add of two arenas.
        a, b = np.ones(1 << 22, np.float32), np.ones(1 << 22, np.float32)
        t = [time.perf_counter()]
        for _ in range(20):
            np.add(a, b, out=a)
            t.append(time.perf_counter())
        gamma = statistics.median(np.diff(t)) / (4 << 22)
        print("RESULT " + json.dumps({"allreduce": out, "gamma_s_per_byte": gamma}), flush=True)


def worker_compute(sizes, batch, steps):
    """Seconds per training step on one thread (forward, backward, Adam)."""
    import nerve as nv

    nv.set_num_threads(1)
    x, y = _data(batch)
    m = _mlp(sizes)
    m.train_step(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        m.train_step(x, y)
        times.append(time.perf_counter() - t)
    print("RESULT " + json.dumps({"step_s": statistics.median(times), "params": m.count_params()}), flush=True)


# -- driver ------------------------------------------------------------------------------------
def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def _run(ranks, threads, args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", os.path.abspath(__file__), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stdout}\n{p.stderr}")
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def ring_time(p, n_floats, alpha, beta, gamma):
    """Ring allreduce of n floats over p nodes: reduce-scatter then allgather,
    2 (p - 1) messages of n / p floats each; the sums touch (p - 1) / p of the data."""
    if p == 1:
        return 0.0
    nbytes = 4.0 * n_floats
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta + (p - 1) / p * nbytes * gamma


def model(results, node_speedup):
    gamma = results["gamma_s_per_byte"]
    out = []
    for name, comp in results["compute"].items():
        t_c = comp["step_s"] / node_speedup
        for gbit in (10, 100):
            for lat_us in (5, 50):
                beta = gbit * 1e9 / 8
                row = {"model": name, "params": comp["params"], "gbit": gbit, "latency_us": lat_us,
                       "compute_ms": 1e3 * t_c, "nodes": {}}
                for p in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                    t = ring_time(p, comp["params"], lat_us * 1e-6, beta, gamma)
                    # Overlapping the allreduce with backward (buckets) could at best hide the shorter
                    # of the two: the bound p * t_c / max(t_c, T).
                    row["nodes"][p] = {"allreduce_ms": 1e3 * t, "speedup": p * t_c / (t_c + t),
                                       "efficiency": t_c / (t_c + t), "overlap_bound": p * t_c / max(t_c, t)}
                out.append(row)
    return out


def fit_loopback(allreduce):
    """The two-rank ring's T = 2 alpha + 4n / beta read off the measurements:
    alpha from the smallest message (latency-bound), beta the best bandwidth
    reached (a least-squares fit over all sizes is meaningless here: large
    messages slow down under load, see bench/README)."""
    small = min(allreduce, key=lambda r: r["floats"])
    return {"alpha_us": small["median_us"] / 2, "beta_GB_per_s": max(r["GB_per_s"] for r in allreduce),
            "at_floats": max(allreduce, key=lambda r: r["GB_per_s"])["floats"]}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, name in zip(axes, results["compute"]):
        for row in results["model"]:
            if row["model"] != name:
                continue
            ps = sorted(int(p) for p in row["nodes"])
            ax.plot(ps, [row["nodes"][p]["speedup"] if p in row["nodes"] else row["nodes"][str(p)]["speedup"]
                         for p in ps], marker="o", ms=3,
                    label=f"{row['gbit']} Gb/s, {row['latency_us']} us")
        ax.plot([1, 256], [1, 256], "k:", lw=0.8, label="linear")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        comp = results["compute"][name]
        ax.set_title(f"{name}: {comp['params'] / 1e6:.2f}M params, "
                     f"t_c = {1e3 * comp['step_s'] / results['node_speedup']:.1f} ms/step")
        ax.set_xlabel("nodes (one rank each, per-node batch 256)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("predicted speedup (weak scaling, no overlap)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Ring allreduce cost model, nerve data-parallel fit", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8192, help="training rows per rank (per run)")
    ap.add_argument("--max-log2", type=int, default=24, help="largest allreduce: 2^N floats")
    ap.add_argument("--node-speedup", type=float, default=16.0)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    a = ap.parse_args(argv)
    res = {"load_average_start": os.getloadavg(), "cores": os.cpu_count(), "node_speedup": a.node_speedup,
           "rounds": a.rounds, "throughput": {}}
    for batch in (512, 2048):
        runs = {"2 ranks x 1 thread": [], "1 rank x 2 threads": []}
        for rnd in range(a.rounds):
            order = list(runs) if rnd % 2 == 0 else list(runs)[::-1]
            for key in order:
                ranks, threads = (2, 1) if key.startswith("2") else (1, 2)
                # The same total rows either way: 2 ranks x rows/2 or 1 rank x rows.
                runs[key].append(_run(ranks, threads, ["_fit", str(batch), str(ranks), str(a.epochs),
                                                       str(2 * a.rows // ranks)]))
        res["throughput"][batch] = {
            k: {"samples_per_sec": statistics.median(r["samples_per_sec"] for r in v),
                "step_ms": statistics.median(r["step_ms"] for r in v),
                "allreduce_ms_per_step": statistics.median(r["allreduce_ms_per_step"] for r in v),
                "all_samples_per_sec": [round(r["samples_per_sec"]) for r in v]}
            for k, v in runs.items()}
        print(f"batch {batch}: " + ", ".join(f"{k}: {v['samples_per_sec']:,.0f} samples/s "
                                              f"(allreduce {v['allreduce_ms_per_step']:.2f} ms/step)"
                                              for k, v in res["throughput"][batch].items()), flush=True)
    ar = _run(2, 1, ["_allreduce", str(a.max_log2)])
    res["allreduce"], res["gamma_s_per_byte"] = ar["allreduce"], ar["gamma_s_per_byte"]
    res["loopback_fit"] = fit_loopback(ar["allreduce"])
    for r in ar["allreduce"]:
        print(f"allreduce {r['floats']:>9} floats: {r['median_us']:9.1f} us, {r['GB_per_s']:.2f} GB/s", flush=True)
    print(f"loopback: alpha ~{res['loopback_fit']['alpha_us']:.1f} us, best {res['loopback_fit']['beta_GB_per_s']:.2f} GB/s "
          f"at {res['loopback_fit']['at_floats']} floats; sum {1e9 * res['gamma_s_per_byte']:.3f} ns/byte")
    res["compute"] = {}
    for name, sizes in (("reference 784-512-256-10", REF), ("10M 784-4096-1664-10", BIG)):
        res["compute"][name] = _run(1, 1, ["_compute", ",".join(map(str, sizes)), "256",
                                           "20" if sizes == REF else "5"])
        print(f"{name}: {1e3 * res['compute'][name]['step_s']:.1f} ms/step at batch 256, 1 thread", flush=True)
    res["model"] = model(res, a.node_speedup)
    for row in res["model"]:
        print(f"{row['model']}, {row['gbit']} Gb/s, {row['latency_us']} us: " + ", ".join(
            f"{p} nodes x{row['nodes'][p]['speedup']:.1f} ({100 * row['nodes'][p]['efficiency']:.0f}%, "
            f"overlap <= x{row['nodes'][p]['overlap_bound']:.1f})"
            for p in (8, 64, 256)))
    res["load_average_end"] = os.getloadavg()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.plot:
        plot(res, a.plot)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_fit":
            worker_fit(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "_allreduce":
            worker_allreduce(int(rest[0]))
        elif kind == "_compute":
            worker_compute([int(s) for s in rest[0].split(",")], int(rest[1]), int(rest[2]))
        sys.exit(0)
    sys.exit(main())
