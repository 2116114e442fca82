"""Recurrent layers end to end: nerve's LSTM / GRU against torch.nn.LSTM / GRU
and JAX (lax.scan under jit), interleaved in one process per thread count.

One training step of the model  input (batch, 50, 64) -> cell(hidden) -> Dense(10),
softmax cross-entropy on the last step's output, Adam; the same initial
weights (PyTorch's layout, nerve's kernel = W_ih.T) and the same batches on
every side. Reports samples/s (medians over interleaved rounds) and
nerve / peer ratios measured in the same rounds.

    python bench/recurrent.py [--against torch,jax] [--cells LSTM,GRU] [--hidden 128,512]
                              [--batches 1,32,256] [--threads 1,2] [--length 50]

XLA fixes its CPU thread pool when it starts, so each thread count runs in a
fresh process (as bench/train_mlp.py does).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from nerve import benchmark  # noqa: E402

FEATURES, CLASSES = 64, 10
GATES = {"LSTM": 4, "GRU": 3}


def init_weights(cell, hidden, seed=0):
    """PyTorch's parameters (weight_ih, weight_hh, bias_ih, bias_hh, head W, head b)."""
    r = np.random.default_rng(seed)
    g = GATES[cell] * hidden
    k = 1.0 / np.sqrt(hidden)
    u = lambda *shape: r.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
    return {"w_ih": u(g, FEATURES), "w_hh": u(g, hidden), "b_ih": u(g), "b_hh": u(g),
            "head_w": u(CLASSES, hidden), "head_b": u(CLASSES)}


def nerve_runner(cell, hidden, w, xs, ys):
    import nerve as nv

    rnn = getattr(nv.layers, cell)(hidden)
    model = nv.Sequential([rnn, nv.layers.Dense(CLASSES)], input_dim=FEATURES)
    rnn.kernel.value = w["w_ih"].T
    rnn.recurrent_kernel.value = w["w_hh"].T
    if cell == "LSTM":
        rnn.bias.value = w["b_ih"] + w["b_hh"]
    else:
        rnn.bias.value = w["b_ih"]
        rnn.recurrent_bias.value = w["b_hh"]
    model.layers[1].kernel.value = w["head_w"].T
    model.layers[1].bias.value = w["head_b"]
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-4), loss="cross_entropy")

    def steps(k):
        t0 = time.perf_counter()
        for i in range(k):
            model.train_step(xs[i % len(xs)], ys[i % len(ys)])
        return time.perf_counter() - t0
    return steps


def torch_runner(cell, hidden, w, xs, ys):
    import torch

    rnn = getattr(torch.nn, cell)(FEATURES, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, CLASSES)
    with torch.no_grad():
        for name, key in (("weight_ih_l0", "w_ih"), ("weight_hh_l0", "w_hh"), ("bias_ih_l0", "b_ih"),
                          ("bias_hh_l0", "b_hh")):
            getattr(rnn, name).copy_(torch.from_numpy(w[key]))
        head.weight.copy_(torch.from_numpy(w["head_w"]))
        head.bias.copy_(torch.from_numpy(w["head_b"]))
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    txs = [torch.from_numpy(x) for x in xs]
    tys = [torch.from_numpy(y) for y in ys]

    def steps(k):
        t0 = time.perf_counter()
        for i in range(k):
            opt.zero_grad(set_to_none=True)
            out, _ = rnn(txs[i % len(txs)])
            loss = torch.nn.functional.cross_entropy(head(out[:, -1]), tys[i % len(tys)])
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    return steps


def jax_loss(cell, hidden):
    """loss(params, x, y) of the JAX model: lax.scan over time of PyTorch's cell equations."""
    import jax
    import jax.numpy as jnp
    import optax

    def lstm_step(p, carry, xt):
        h, c = carry
        z = xt @ p["w_ih"].T + h @ p["w_hh"].T + p["b_ih"] + p["b_hh"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    def gru_step(p, carry, xt):
        (h,) = carry
        gi = xt @ p["w_ih"].T + p["b_ih"]
        gh = h @ p["w_hh"].T + p["b_hh"]
        ir, iz, in_ = jnp.split(gi, 3, axis=-1)
        hr, hz, hn = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(ir + hr)
        z = jax.nn.sigmoid(iz + hz)
        n = jnp.tanh(in_ + r * hn)
        return ((1 - z) * n + z * h,), None

    step_fn = lstm_step if cell == "LSTM" else gru_step

    def loss_fn(p, x, y):
        b = x.shape[0]
        h0 = jnp.zeros((b, hidden), x.dtype)
        carry = (h0, h0) if cell == "LSTM" else (h0,)
        carry, _ = jax.lax.scan(lambda c, xt: step_fn(p, c, xt), carry, jnp.swapaxes(x, 0, 1))
        logits = carry[0] @ p["head_w"].T + p["head_b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def jax_runner(cell, hidden, w, xs, ys):
    import jax
    import jax.numpy as jnp
    import optax

    loss_fn = jax_loss(cell, hidden)
    opt = optax.adam(1e-4)

    def train(p, st, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, st = opt.update(grads, st, p)
        return optax.apply_updates(p, updates), st, loss

    train = jax.jit(train, donate_argnums=(0, 1))
    params = {k: jnp.asarray(v) for k, v in w.items()}
    box = {"p": params, "st": opt.init(params)}
    jxs = [jax.device_put(x) for x in xs]
    jys = [jax.device_put(y.astype(np.int32)) for y in ys]

    def steps(k):
        p, st = box["p"], box["st"]
        t0 = time.perf_counter()
        for i in range(k):
            p, st, _ = train(p, st, jxs[i % len(jxs)], jys[i % len(jys)])
        jax.block_until_ready(p)
        dt = time.perf_counter() - t0
        box["p"], box["st"] = p, st
        return dt
    return steps


RUNNERS = {"nerve": nerve_runner, "torch": torch_runner, "jax": jax_runner}


def run(cells, hiddens, batches, threads, length, peers, rounds, seconds, log=print):
    import nerve as nv

    if "torch" in peers:
        import torch

        torch.set_num_threads(threads)
    nv.set_num_threads(threads)
    rows = []
    for cell in cells:
        for hidden in hiddens:
            w = init_weights(cell, hidden)
            for batch in batches:
                r = np.random.default_rng(batch)
                xs = [r.standard_normal((batch, length, FEATURES)).astype(np.float32) for _ in range(4)]
                ys = [r.integers(0, CLASSES, batch).astype(np.int64) for _ in range(4)]
                runners = {name: RUNNERS[name](cell, hidden, w, xs, ys) for name in ["nerve", *peers]}
                steps = {}
                for name, fn in runners.items():
                    fn(2)
                    steps[name] = max(2, int(seconds / max(fn(2) / 2, 1e-7)))
                rates = {name: [] for name in runners}
                for rnd in range(rounds):
                    order = list(runners) if rnd % 2 == 0 else list(reversed(list(runners)))
                    for name in order:
                        rates[name].append(steps[name] * batch / runners[name](steps[name]))
                row = {"cell": cell, "hidden": hidden, "batch": batch, "threads": threads}
                for name, vals in rates.items():
                    row[f"{name}_samples_per_s"] = statistics.median(vals)
                for peer in peers:
                    row[f"ratio_{peer}"] = statistics.median(a / b for a, b in zip(rates["nerve"], rates[peer]))
                rows.append(row)
                log(f"{cell} h{hidden} b{batch} {threads}T: " + ", ".join(
                    f"{n} {row[f'{n}_samples_per_s']:,.0f}/s" for n in runners) + "".join(
                    f", nerve/{p} {row[f'ratio_{p}']:.2f}x" for p in peers), flush=True)
    return rows


def table(rows, peers):
    names = {"torch": "PyTorch", "jax": "JAX"}
    head = "| cell | hidden | batch | threads | nerve samples/s |" + "".join(
        f" {names[p]} samples/s | nerve / {names[p]} |" for p in peers)
    lines = [head, "|" + "---|" * (5 + 2 * len(peers))]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['hidden']} | {r['batch']} | {r['threads']} | "
                     f"{r['nerve_samples_per_s']:,.0f} |" + "".join(
                         f" {r[f'{p}_samples_per_s']:,.0f} | **{r[f'ratio_{p}']:.2f}×** |" for p in peers))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default="torch,jax")
    ap.add_argument("--cells", default="LSTM,GRU")
    ap.add_argument("--hidden", default="128,512")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    peers = [p for p in a.against.split(",") if p]
    for p in peers:
        if p not in ("torch", "jax"):
            ap.error(f"unknown peer {p!r}: choose from torch, jax")
    cells = [c.strip().upper() for c in a.cells.split(",")]
    unknown = [c for c in cells if c not in GATES]
    if unknown:
        ap.error(f"--cells: unknown {', '.join(unknown)} (choose from {', '.join(GATES)})")
    hiddens = [int(h) for h in a.hidden.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    if a.child:
        benchmark.pin_to_threads(threads[0])  # XLA's CPU client ignores its 1-thread flags
        rows = run(cells, hiddens, batches, threads[0], a.length, peers, a.rounds, a.seconds)
        with open(a.json, "w") as f:
            json.dump(rows, f)
        return 0
    rows = []
    passed = benchmark._drop_options(list(sys.argv[1:] if argv is None else argv), {"--threads": 1, "--json": 1})
    for t in threads:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), *passed, "--threads", str(t),
                            "--json", out, "--child"], check=True, env=benchmark.jax_thread_env(t))
            with open(out) as f:
                rows += json.load(f)
    print(f"\ninput (batch, {a.length}, {FEATURES}) -> cell -> Dense({CLASSES}), cross-entropy, Adam; "
          f"medians of {a.rounds} interleaved rounds")
    print(table(rows, peers))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
