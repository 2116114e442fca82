"""End-to-end training benchmark: nerve against PyTorch eager and JAX, interleaved in one run.

Trains the same MLP (same initial weights, Adam, softmax cross-entropy) in
each framework on the same random batches, one optimizer step per call, and
reports samples/s per batch size and thread count as medians over rounds that
alternate between them, with the nerve/peer ratios measured in the same run.
Peers: PyTorch eager (``torch``: model, loss.backward(), torch.optim.Adam) and
JAX (``jax``: value_and_grad of the loss and optax.adam's update compiled into
one XLA call with ``jax.jit``, parameters and state donated). XLA fixes its
CPU thread pool when it starts, so with JAX each thread count runs in its own
process (nerve, PyTorch and JAX all inside it, interleaved as before). Also reports the achieved GFLOP/s of the step (6·params-ish FLOPs per
sample: forward 2, backward 4 per weight) and, for batches >= 512, that rate
against the best sgemm GFLOP/s (numpy's BLAS or PyTorch's, 2048³) measured in
the same run at the same thread count (bench/machine_limits.py has the
per-shape table).

Run: python bench/train_mlp.py [--against torch,jax] [--threads 1,2] [--model ref]
or:  nerve bench --against torch
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

MODELS = {
    "ref": [784, 512, 256, 10],
    "wide": [784, 2048, 2048, 10],
    "deep": [784] + [128] * 20 + [10],
}


def flops_per_sample(sizes):
    """Forward 2·in·out per layer, backward 4·in·out (dX and dW); the first
    layer needs no dX, as neither framework computes it."""
    total = 0
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        total += (6 if i > 0 else 4) * a * b
    return total


def _nerve_model(sizes, weights, lr):
    import nerve as nv

    layers = [nv.layers.Dense(b, activation="relu" if i < len(sizes) - 2 else None)
              for i, b in enumerate(sizes[1:])]
    model = nv.Sequential(layers, input_dim=sizes[0])
    for p, w in zip(model.parameters(), weights):
        p.value = w
    model.compile(optimizer=nv.optimizers.Adam(lr=lr), loss="cross_entropy")
    return model


def _torch_model(sizes, weights, lr, fused):
    import torch

    mods = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(weights[2 * i].T.copy()))
            lin.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
        mods.append(lin)
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True if fused else None)
    return model, opt


def _jax_steps(sizes, weights, lr, xs, ys):
    """A function k -> seconds for k JAX training steps (jit of the whole step)."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss_fn(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    opt = optax.adam(lr)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    params = [(jnp.asarray(weights[2 * i]), jnp.asarray(weights[2 * i + 1])) for i in range(len(sizes) - 1)]
    box = {"params": params, "state": opt.init(params)}
    jxs = [jax.device_put(x) for x in xs]
    jys = [jax.device_put(y.astype(np.int32)) for y in ys]
    pool = len(xs)

    def jax_steps(k):
        p, st = box["params"], box["state"]
        t0 = time.perf_counter()
        for i in range(k):
            p, st, _ = step(p, st, jxs[i % pool], jys[i % pool])
        jax.block_until_ready(p)
        dt = time.perf_counter() - t0
        box["params"], box["state"] = p, st
        return dt

    return jax_steps


def jax_thread_env(threads, env=None):
    """Environment for a process whose XLA CPU backend uses `threads` threads
    (XLA reads XLA_FLAGS once, when the backend starts)."""
    env = dict(os.environ if env is None else env)
    flags = env.get("XLA_FLAGS", "")
    if threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def pin_to_threads(threads):
    """Keeps this process on `threads` CPUs (Linux), so that XLA, whose CPU
    client in JAX 0.10 ignores intra_op_parallelism_threads=1 and ran its
    "1-thread" steps on 2 cores here, gets no more cores than the others.
    Call before jax starts. Returns the CPUs kept, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    keep = set(cpus[:max(1, threads)])
    os.sched_setaffinity(0, keep)
    return keep


def peers_of(against):
    """'torch', 'torch,jax', None or a list -> list of peer names."""
    if not against:
        return []
    names = against.split(",") if isinstance(against, str) else list(against)
    for n in names:
        if n not in PEERS:
            raise ValueError(f"unknown peer {n!r}: choose from {', '.join(PEERS)}")
    return names


PEERS = {"torch": "PyTorch", "jax": "JAX"}


def sgemm_roof(torch=None, n=2048, seconds=0.3, min_calls=7):
    """Best sgemm GFLOP/s of this process's BLAS libraries on an n x n x n
    product at the current thread count: numpy's (OpenBLAS) and PyTorch's (MKL)
    when given, the fastest of at least `min_calls` calls (a 2048^3 product
    takes ~0.2 s on one core: a time budget alone gave two samples, and a
    noisy low roof flattered the ratio held against it). The roof that the
    whole-step GFLOP/s at large batches is held against (issue 6: >= 90%).
    Returns {"numpy": .., "torch": ..}."""
    r = np.random.default_rng(0)
    a = r.standard_normal((n, n)).astype(np.float32)
    b = r.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    libs = {"numpy": lambda: np.matmul(a, b, out=c)}
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        libs["torch"] = lambda: torch.mm(ta, tb, out=tc)
    out = {}
    for name, fn in libs.items():
        fn()
        best = float("inf")
        t_end = time.perf_counter() + seconds
        calls = 0
        while True:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
            calls += 1
            if calls >= min_calls and time.perf_counter() > t_end:
                break
        out[name] = 2.0 * n ** 3 / best / 1e9
    return out


def _init_weights(sizes, seed=0):
    r = np.random.default_rng(seed)
    out = []
    for a, b in zip(sizes, sizes[1:]):
        bound = 1.0 / np.sqrt(a)
        out.append(r.uniform(-bound, bound, (a, b)).astype(np.float32))
        out.append(r.uniform(-bound, bound, b).astype(np.float32))
    return out


def run(sizes, batches, threads, rounds, against, seconds, fused, log=print, roof=True):
    import nerve as nv

    peers = peers_of(against)
    torch = None
    if "torch" in peers:
        import torch
    results = []
    weights = _init_weights(sizes)
    fps = flops_per_sample(sizes)
    for t in threads:
        nv.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        # numpy's BLAS pool follows too, so the roof is measured at t threads.
        limiter = None
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=t, user_api="blas")
        except ImportError:
            pass
        first_row = len(results)
        for batch in batches:
            r = np.random.default_rng(batch)
            pool = max(4, min(64, (1 << 22) // (batch * sizes[0]) + 1))
            xs = [r.standard_normal((batch, sizes[0])).astype(np.float32) for _ in range(pool)]
            ys = [r.integers(0, sizes[-1], batch).astype(np.int64) for _ in range(pool)]
            nmodel = _nerve_model(sizes, weights, 1e-4)

            def nerve_steps(k):
                t0 = time.perf_counter()
                for i in range(k):
                    nmodel.train_step(xs[i % pool], ys[i % pool])
                return time.perf_counter() - t0

            runners = {"nerve": nerve_steps}
            if torch is not None:
                tmodel, topt = _torch_model(sizes, weights, 1e-4, fused)
                txs = [torch.from_numpy(x) for x in xs]
                tys = [torch.from_numpy(y) for y in ys]
                loss_fn = torch.nn.functional.cross_entropy

                def torch_steps(k):
                    t0 = time.perf_counter()
                    for i in range(k):
                        topt.zero_grad(set_to_none=True)
                        loss = loss_fn(tmodel(txs[i % pool]), tys[i % pool])
                        loss.backward()
                        topt.step()
                    return time.perf_counter() - t0

                runners["torch"] = torch_steps
            if "jax" in peers:
                runners["jax"] = _jax_steps(sizes, weights, 1e-4, xs, ys)
            # Warm up and size each measurement to ~`seconds`.
            steps = {}
            for name, fn in runners.items():
                fn(2)
                per = fn(3) / 3
                steps[name] = max(3, int(seconds / max(per, 1e-7)))
            rates = {name: [] for name in runners}
            for rnd in range(rounds):
                order = list(runners) if rnd % 2 == 0 else list(reversed(list(runners)))
                for name in order:
                    k = steps[name]
                    rates[name].append(k * batch / runners[name](k))
            row = {"threads": t, "batch": batch}
            for name, vals in rates.items():
                row[f"{name}_samples_per_s"] = statistics.median(vals)
                row[f"{name}_gflops"] = statistics.median(vals) * fps / 1e9
            # The roof below is a best-of-calls figure; the step's best round
            # is the like-for-like companion of its median on a shared machine.
            row["nerve_best_gflops"] = max(rates["nerve"]) * fps / 1e9
            for peer in peers:
                # Same-round ratios: both sides of a ratio saw the same load.
                ratios = [a / b for a, b in zip(rates["nerve"], rates[peer])]
                row[f"ratio_{peer}"] = statistics.median(ratios)
            if "torch" in peers:
                row["ratio"] = row["ratio_torch"]  # the name older results and bench/report.py use
            results.append(row)
            msg = f"threads={t} batch={batch}: nerve {row['nerve_samples_per_s']:,.0f}/s"
            for peer in peers:
                msg += f", {peer} {row[f'{peer}_samples_per_s']:,.0f}/s, ratio {row[f'ratio_{peer}']:.2f}x"
            log(msg)
        # The roof is measured after this thread count's rows: numpy's BLAS
        # threads spin for a while after a call and would steal cycles from
        # the timings that follow.
        if roof and any(b >= 512 for b in batches):
            roof_gf = sgemm_roof(torch)
            for row in results[first_row:]:
                row["sgemm_roof"] = roof_gf
                row["nerve_vs_best_sgemm"] = row["nerve_gflops"] / max(roof_gf.values())
                row["nerve_best_vs_best_sgemm"] = row["nerve_best_gflops"] / max(roof_gf.values())
        if limiter is not None:
            limiter.restore_original_limits()
    return results


def roof_share(r):
    """'89%' (median round against the best sgemm), with the best round's share
    when the run recorded it: '89% (best round 91%)'."""
    text = f"{r['nerve_vs_best_sgemm']:.0%}"
    if "nerve_best_vs_best_sgemm" in r:
        text += f" (best round {r['nerve_best_vs_best_sgemm']:.0%})"
    return text


def table(results, against):
    peers = peers_of(against)
    roof = any("sgemm_roof" in r for r in results)
    head = "| threads | batch | nerve samples/s | nerve GFLOP/s |"
    sep = "|---|---|---|---|"
    for peer in peers:
        name = PEERS[peer]
        head += f" {name} samples/s | nerve / {name} |"
        sep += "---|---|"
    if roof:
        head += " best sgemm GFLOP/s | nerve step / best sgemm |"
        sep += "---|---|"
    lines = [head, sep]
    for r in results:
        line = f"| {r['threads']} | {r['batch']} | {r['nerve_samples_per_s']:,.0f} | {r['nerve_gflops']:.1f} |"
        for peer in peers:
            line += f" {r[f'{peer}_samples_per_s']:,.0f} | **{r[f'ratio_{peer}']:.2f}×** |"
        if roof:
            if "sgemm_roof" in r and r["batch"] >= 512:
                best = max(r["sgemm_roof"], key=r["sgemm_roof"].get)
                line += f" {r['sgemm_roof'][best]:.1f} ({best}) | {roof_share(r)} |"
            else:
                line += " | |"
        lines.append(line)
    return "\n".join(lines)


def _per_thread_processes(argv, threads):
    """Runs this benchmark once per thread count, each in a fresh process whose
    XLA uses that many threads; returns the merged results."""
    import subprocess
    import tempfile

    results = []
    for t in threads:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            cmd = [sys.executable, "-m", "nerve.benchmark", *argv, "--threads", str(t), "--json", out,
                   "--child"]
            subprocess.run(cmd, check=True, env=jax_thread_env(t))
            with open(out) as f:
                results += json.load(f)["results"]
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", default=None, help="comma-separated peers: torch, jax (e.g. torch,jax)")
    p.add_argument("--model", choices=sorted(MODELS), default="ref")
    p.add_argument("--batches", default="1,32,128,512,2048")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.25, help="target duration of one measurement")
    p.add_argument("--torch-fused", action="store_true", help="PyTorch Adam(fused=True) instead of its default")
    p.add_argument("--flush-denormal", action="store_true",
                   help="flush subnormal floats to zero in nerve and PyTorch, as XLA's CPU backend always "
                        "does (nv.set_flush_denormal, torch.set_flush_denormal)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--no-roof", action="store_true", help="skip the sgemm roof measurement (batches >= 512)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        peers = peers_of(a.against)
    except ValueError as e:
        p.error(str(e))
    import nerve as nv

    if a.flush_denormal:
        # JAX needs nothing: XLA's CPU backend computes with denormals flushed
        # (a jitted 1e-20 * 1e-20 gives 0). nerve and PyTorch keep IEEE
        # subnormals by default, which on some cores take a slow path
        # 10x slower (bench/flush_denormal.py).
        nv.set_flush_denormal(True)
        if "torch" in peers:
            import torch

            torch.set_flush_denormal(True)
    sizes = MODELS[a.model]
    batches = [int(b) for b in a.batches.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    if "jax" in peers and not a.child:
        passed = _drop_options(sys.argv[1:] if argv is None else list(argv), {"--threads": 1, "--json": 1})
        results = _per_thread_processes(passed, threads)
    else:
        if "jax" in peers:
            pin_to_threads(threads[0])
            nv.set_num_threads(threads[0])
        results = run(sizes, batches, threads, a.rounds, peers, a.seconds, a.torch_fused, roof=not a.no_roof)
    meta = {"model": sizes, "nerve": nv.build_info(), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "rounds": a.rounds, "torch_fused": a.torch_fused,
            "flush_denormal": a.flush_denormal}
    if "torch" in peers:
        import torch

        meta["torch"] = torch.__version__
    if "jax" in peers:
        import jax

        meta["jax"] = jax.__version__
    if a.child:  # the parent prints the merged table
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f)
        return 0
    print()
    flushed = "; subnormals flushed to zero in every framework" if a.flush_denormal else ""
    print(f"model {'-'.join(map(str, sizes))}, Adam, cross-entropy; medians of {a.rounds} interleaved rounds{flushed}")
    print(table(results, peers))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


def _drop_options(argv, options):
    """argv without the given options (and their values, `--opt v` or `--opt=v`)."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = 0 if "=" in arg else options[name]
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
