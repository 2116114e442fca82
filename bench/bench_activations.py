"""Activations and losses: nerve against PyTorch eager on the same arrays.

    python bench/bench_activations.py [--sizes 16384,16777216] [--rounds 7]
                                      [--json bench/results/activations.json]
                                      [--markdown bench/results/activations.md]

What is timed (both sides allocate their output, as a user's call does):
  * activation forward: ``act.forward(x)`` vs ``torch.nn.functional.<f>(t)``;
  * activation backward: ``act.backward(x, dy, y=y)`` (y saved from forward,
    as autograd saves it) vs ``torch.autograd.grad(y, t, dy, retain_graph=True)``
    (autograd's backward node alone, the graph built once outside the timer);
  * loss forward + backward: ``loss.forward_backward(pred, target)`` vs
    ``F.<loss>(t, target); backward()`` on a fresh leaf.
Rounds interleave nerve and torch for every case, so a slow moment of the
(shared) machine hits both; each entry is the median over rounds, and the
ratio is torch time / nerve time (> 1: nerve is faster). Threads: nerve's
OpenMP and torch's intra-op pool both use every core unless --threads says
otherwise. The C++ microbenchmarks (elements/s, copy bandwidth) are the
Google Benchmark programs in bench/ (CMake option NERVE_BENCHMARKS).
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

ACTIVATIONS = [
    # (label, nerve name, nerve params, torch forward (t -> y) builder, has torch backward)
    ("identity", "identity", {}, lambda F, torch: (lambda t: t.clone()), True),
    ("sigmoid", "sigmoid", {}, lambda F, torch: torch.sigmoid, True),
    ("tanh", "tanh", {}, lambda F, torch: torch.tanh, True),
    ("relu", "relu", {}, lambda F, torch: F.relu, True),
    ("leaky_relu", "leaky_relu", {}, lambda F, torch: F.leaky_relu, True),
    ("elu", "elu", {}, lambda F, torch: F.elu, True),
    ("selu", "selu", {}, lambda F, torch: F.selu, True),
    ("crelu", "crelu", {}, lambda F, torch: (lambda t: torch.cat([F.relu(t), F.relu(-t)], dim=1)), True),
    ("swish", "swish", {}, lambda F, torch: F.silu, True),
    ("binary_step", "binary_step", {},
     lambda F, torch: (lambda t: torch.heaviside(t, torch.ones((), dtype=t.dtype))), False),
    ("softmax", "softmax", {}, lambda F, torch: (lambda t: F.softmax(t, dim=1)), True),
    ("log_softmax", "log_softmax", {}, lambda F, torch: (lambda t: F.log_softmax(t, dim=1)), True),
    ("gelu", "gelu", {}, lambda F, torch: F.gelu, True),
    ("gelu(tanh)", "gelu", {"approximate": "tanh"}, lambda F, torch: (lambda t: F.gelu(t, approximate="tanh")), True),
    ("softplus", "softplus", {}, lambda F, torch: F.softplus, True),
    ("mish", "mish", {}, lambda F, torch: F.mish, True),
    ("hard_sigmoid", "hard_sigmoid", {}, lambda F, torch: F.hardsigmoid, True),
    ("hard_swish", "hard_swish", {}, lambda F, torch: F.hardswish, True),
    ("relu6", "relu6", {}, lambda F, torch: F.relu6, True),
    ("rrelu(eval)", "rrelu", {}, lambda F, torch: (lambda t: F.rrelu(t, training=False)), True),
    ("rrelu(train)", "rrelu", {"training": True}, lambda F, torch: (lambda t: F.rrelu(t, training=True)), True),
]


def loss_cases(rows, cols, torch):
    F = torch.nn.functional
    r = np.random.default_rng(0)
    logits = (r.standard_normal((rows, cols)) * 2).astype(np.float32)
    labels = r.integers(0, cols, rows).astype(np.int64)
    probs = r.dirichlet(np.ones(cols), rows).astype(np.float32)
    reg_t = r.standard_normal((rows, cols)).astype(np.float32)
    p01 = (1 / (1 + np.exp(-logits))).astype(np.float32)
    t01 = (r.random((rows, cols)) > 0.5).astype(np.float32)
    teacher = (r.standard_normal((rows, cols)) * 2).astype(np.float32)
    w = list(np.linspace(0.5, 2.0, cols))
    T = lambda a: torch.from_numpy(a)  # noqa: E731
    wt = torch.tensor(w, dtype=torch.float32)

    def focal_t(x, y, g=2.0):
        lp = F.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
        return (-(1 - lp.exp()) ** g * lp).mean()

    def distill_t(x, teacher_t, y, temp=4.0, a=0.5):
        kl = F.kl_div(F.log_softmax(x / temp, dim=1), F.log_softmax(teacher_t / temp, dim=1),
                      reduction="batchmean", log_target=True)
        return a * temp * temp * kl + (1 - a) * F.cross_entropy(x, y)

    return [
        ("mse", ("mse", {}), logits, reg_t, lambda x: F.mse_loss(x, T(reg_t))),
        ("mae", ("mae", {}), logits, reg_t, lambda x: F.l1_loss(x, T(reg_t))),
        ("huber", ("huber", {}), logits, reg_t, lambda x: F.huber_loss(x, T(reg_t))),
        ("smooth_l1", ("smooth_l1", {}), logits, reg_t, lambda x: F.smooth_l1_loss(x, T(reg_t))),
        ("binary_cross_entropy", ("binary_cross_entropy", {}), p01, t01,
         lambda x: F.binary_cross_entropy(x, T(t01))),
        ("bce_with_logits", ("binary_cross_entropy_with_logits", {}), logits, t01,
         lambda x: F.binary_cross_entropy_with_logits(x, T(t01))),
        ("cross_entropy", ("cross_entropy", {}), logits, labels, lambda x: F.cross_entropy(x, T(labels))),
        ("cross_entropy(weight,ls=0.1)", ("cross_entropy", {"weight": w, "label_smoothing": 0.1}), logits, labels,
         lambda x: F.cross_entropy(x, T(labels), weight=wt, label_smoothing=0.1)),
        ("cross_entropy(probs)", ("cross_entropy", {}), logits, probs, lambda x: F.cross_entropy(x, T(probs))),
        ("focal", ("focal", {}), logits, labels, lambda x: focal_t(x, T(labels))),
        ("distillation(T=4)", ("distillation", {"temperature": 4.0}), logits, (teacher, labels),
         lambda x: distill_t(x, T(teacher), T(labels))),
    ]


def timeit(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def calibrate(fn, target=0.02):
    fn()
    t = timeit(fn, 1)
    return max(1, min(2000, int(target / max(t, 1e-7))))


def run(args):
    import torch
    F = torch.nn.functional
    if args.threads:
        nv.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    cases = []  # (section, label, size, nerve_fn, torch_fn)
    rng = np.random.default_rng(0)
    for size in args.sizes:
        cols = 1024 if size >= 1024 else size
        shape = (size // cols, cols)
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        for label, name, params, tb, has_bwd in ACTIVATIONS:
            if args.only and not any(o in label for o in args.only):
                continue
            params = dict(params)
            training = params.pop("training", False)
            act = nv.activations.get(name, **params)
            fwd_t = tb(F, torch)
            tx = torch.from_numpy(x)
            y = act.forward(x, training=training, seed=1, step=1)
            dy = np.ones_like(y) * 0.5
            cases.append(("forward", label, size,
                          (lambda a=act, tr=training, x=x: a.forward(x, training=tr, seed=1, step=1)),
                          (lambda f=fwd_t, t=tx: f(t))))
            if not has_bwd:
                continue
            tl = tx.clone().requires_grad_(True)
            ty = fwd_t(tl)
            tdy = torch.from_numpy(dy)
            cases.append(("backward", label, size,
                          (lambda a=act, y=y, dy=dy, tr=training, x=x: a.backward(x, dy, training=tr, seed=1, step=1, y=y)),
                          (lambda ty=ty, tl=tl, tdy=tdy: torch.autograd.grad(ty, tl, tdy, retain_graph=True))))
    for rows, cols in args.loss_shapes:
        for label, (name, params), pred, target, tfn in loss_cases(rows, cols, torch):
            if args.only and not any(o in label for o in args.only):
                continue
            loss = nv.losses.get(name, **params)

            def tstep(tfn=tfn, pred=pred):
                t = torch.from_numpy(pred).requires_grad_(True)
                tfn(t).backward()
                return t.grad

            cases.append(("loss", label, rows * cols,
                          (lambda loss=loss, p=pred, t=target: loss.forward_backward(p, t)), tstep))

    reps = [(calibrate(c[3]), calibrate(c[4])) for c in cases]
    samples = [([], []) for _ in cases]
    for _ in range(args.rounds):
        for i, c in enumerate(cases):
            samples[i][0].append(timeit(c[3], reps[i][0]))
            samples[i][1].append(timeit(c[4], reps[i][1]))
    results = []
    for c, (sn, st) in zip(cases, samples):
        n, t = statistics.median(sn), statistics.median(st)
        results.append({"section": c[0], "name": c[1], "elements": c[2], "nerve_us": n * 1e6,
                        "torch_us": t * 1e6, "ratio": t / n})
    return results, torch.__version__, torch.get_num_threads()


def markdown(results, info):
    lines = [f"nerve {info['nerve']} vs PyTorch {info['torch']} eager; {info['cpu']}; "
             f"threads nerve={info['nerve_threads']} torch={info['torch_threads']}; "
             f"median of {info['rounds']} interleaved rounds. ratio = torch / nerve (> 1: nerve faster).", ""]
    for section in ("forward", "backward", "loss"):
        rows = [r for r in results if r["section"] == section]
        if not rows:
            continue
        title = {"forward": "Activation forward", "backward": "Activation backward (y saved)",
                 "loss": "Loss forward + backward"}[section]
        lines += [f"### {title}", "", "| case | elements | nerve µs | torch µs | ratio |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            flag = "" if r["ratio"] >= 1.0 else " ⚠"
            lines.append(f"| {r['name']} | {r['elements']:,} | {r['nerve_us']:.1f} | {r['torch_us']:.1f} | "
                         f"{r['ratio']:.2f}{flag} |")
        lines.append("")
    slower = [r for r in results if r["ratio"] < 1.0]
    lines.append(f"slower than torch: {len(slower)} of {len(results)}" +
                 (": " + ", ".join(f"{r['section']} {r['name']} @{r['elements']:,} ({r['ratio']:.2f})"
                                   for r in slower) if slower else ""))
    return "\n".join(lines)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16384,16777216", help="activation sizes in floats")
    ap.add_argument("--loss-shapes", default="2048x10,2048x1000", help="loss (rows x cols) shapes")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    ap.add_argument("--json", default=os.path.join("bench", "results", "activations.json"))
    ap.add_argument("--markdown", default=os.path.join("bench", "results", "activations.md"))
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_activations needs PyTorch (pip install torch) as the comparison", file=sys.stderr)
        return 2
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.loss_shapes = [tuple(int(v) for v in s.split("x")) for s in args.loss_shapes.split(",") if s]
    args.only = [o for o in args.only.split(",") if o]
    results, torch_version, torch_threads = run(args)
    info = {"nerve": nv.__version__, "torch": torch_version, "cpu": cpu_name(), "rounds": args.rounds,
            "nerve_threads": nv.get_num_threads(), "torch_threads": torch_threads}
    text = markdown(results, info)
    print(text)
    for path, content in ((args.json, json.dumps({"info": info, "results": results}, indent=1)),
                          (args.markdown, text + "\n")):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
