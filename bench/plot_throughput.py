"""Samples/s against batch size for nerve and PyTorch, from bench/train_mlp.py's JSON.

Run: python bench/plot_throughput.py bench/results/train_mlp_ref.json [--out docs/throughput.png]

One line per framework and thread count, log-log axes; the title names the
model and the ratio band. Needs matplotlib (optional dependency).
"""
import argparse
import json
import os


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", help="output of bench/train_mlp.py --json")
    p.add_argument("--out", default="docs/throughput.png", help="PNG to write")
    a = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot_throughput.py needs matplotlib: pip install matplotlib")
    with open(a.json) as f:
        data = json.load(f)
    rows = data["results"]
    threads = sorted({r["threads"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {1: "-", 2: "--"}
    for t in threads:
        rs = sorted((r for r in rows if r["threads"] == t), key=lambda r: r["batch"])
        bs = [r["batch"] for r in rs]
        ax.plot(bs, [r["nerve_samples_per_s"] for r in rs], styles.get(t, ":"), marker="o",
                color="tab:green", label=f"nerve, {t} thread{'s' if t > 1 else ''}")
        if "torch_samples_per_s" in rs[0]:
            ax.plot(bs, [r["torch_samples_per_s"] for r in rs], styles.get(t, ":"), marker="s",
                    color="tab:red", label=f"PyTorch {data['meta'].get('torch', '')} eager, {t} thread{'s' if t > 1 else ''}")
    ax.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training samples / s (Adam step incl.)")
    model = "-".join(map(str, data["meta"]["model"]))
    ax.set_title(f"MLP {model}, ReLU, Adam, cross-entropy, float32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
