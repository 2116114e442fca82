"""Peak memory of a training run: nerve against PyTorch, each in a fresh process.

Each run imports its framework, makes the data (random Fashion-MNIST-sized
rows), then resets the kernel's peak-RSS counter (/proc/self/clear_refs = 5),
notes the resident set, trains one epoch of the model with Adam and
cross-entropy, and reports the peak resident set (VmHWM) minus the resident
set before the model was built: the memory the model, its optimizer state,
the activations and every workspace of training cost, framework imports and
the data excluded.

Run: python bench/peak_memory.py [--model ref] [--batches 128,2048] [--json ...]  (Linux only)
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import sys, json
import numpy as np
framework, batch, rows, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
warm = sys.argv[5] == "warm"
if framework == "torch":
    import torch
    torch.set_num_threads(1)
else:
    import nerve as nv
    nv.set_num_threads(1)
r = np.random.default_rng(0)
x = r.standard_normal((rows, sizes[0])).astype(np.float32)
y = r.integers(0, sizes[-1], rows)

if warm:  # one step of a tiny model first: lazily loaded kernels/libraries are not counted
    wx, wy = np.ones((4, 8), np.float32), np.array([0, 1, 0, 1])
    if framework == "torch":
        wm = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        wo = torch.optim.Adam(wm.parameters())
        torch.nn.functional.cross_entropy(wm(torch.from_numpy(wx)), torch.from_numpy(wy)).backward()
        wo.step()
    else:
        wm = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.Dense(2)], input_dim=8)
        wm.compile(optimizer=nv.optimizers.Adam(), loss="cross_entropy")
        wm.fit(wx, wy, epochs=1, batch_size=4, verbose=0)

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
if framework == "torch":
    mods = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    perm = torch.from_numpy(r.permutation(rows))
    for i in range(0, rows, batch):
        idx = perm[i:i + batch]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
        loss.backward()
        opt.step()
else:
    layers = [nv.layers.Dense(b, activation="relu") for b in sizes[1:-1]] + [nv.layers.Dense(sizes[-1])]
    model = nv.Sequential(layers, input_dim=sizes[0])
    model.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
    model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
peak = status("VmHWM")
print(json.dumps({"delta_bytes": peak - before}))
'''

MODELS = {"ref": [784, 512, 256, 10], "wide": [784, 2048, 2048, 10], "deep": [784] + [128] * 20 + [10]}


def measure(framework, batch, rows, sizes, warm):
    out = subprocess.run([sys.executable, "-c", CHILD, framework, str(batch), str(rows), json.dumps(sizes),
                          "warm" if warm else "cold"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["delta_bytes"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="ref")
    p.add_argument("--batches", default="128,2048")
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    sizes = MODELS[a.model]
    params = sum(x * y + y for x, y in zip(sizes, sizes[1:]))
    rows = []
    for batch in [int(b) for b in a.batches.split(",")]:
        for warm in (False, True):
            row = {"batch": batch, "warm": warm, "nerve_MB": measure("nerve", batch, a.rows, sizes, warm) / 1e6}
            try:
                row["torch_MB"] = measure("torch", batch, a.rows, sizes, warm) / 1e6
            except subprocess.CalledProcessError:
                row["torch_MB"] = None
            rows.append(row)
    print(f"model {'-'.join(map(str, sizes))} ({params:,} parameters = {4 * params / 1e6:.1f} MB; "
          f"Adam state 2x that), one epoch of {a.rows} rows, 1 thread")
    print("cold: the framework's first training in the process; warm: after one step of a tiny model")
    print("| batch | run | nerve peak RSS increase MB | PyTorch peak RSS increase MB | nerve / PyTorch |")
    print("|---|---|---|---|---|")
    for r in rows:
        t = f"{r['torch_MB']:.1f}" if r["torch_MB"] is not None else "–"
        ratio = f"{r['nerve_MB'] / r['torch_MB']:.2f}" if r["torch_MB"] else "–"
        print(f"| {r['batch']} | {'warm' if r['warm'] else 'cold'} | {r['nerve_MB']:.1f} | {t} | {ratio} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"model": sizes, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
