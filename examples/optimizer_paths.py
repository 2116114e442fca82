"""Every optimizer from the same start on a 2-D surface: the playbook's two
pictures (optimizers on a loss surface, and at a saddle point).

Each optimizer is nerve's own (one fused C++ step) on an nv.Parameter of two
values; the gradient comes from nv.surfaces. Prints a table (final f, distance
to the minimum, steps to tolerance) per surface and saves a contour plot with
the paths (PNG) and an animation (GIF, needs pillow).

    python examples/optimizer_paths.py --out /tmp/paths
    python examples/optimizer_paths.py --surfaces rosenbrock saddle --no-gif
"""
import argparse
import os
import time

import numpy as np

import nerve as nv

# label -> (class name, hyper-parameters). The learning rates are tuned by
# hand to show each method's behaviour (not to win a race): gradients on Beale
# reach ~50 at the start, ~150 on Rosenbrock; one table serves both.
_STEEP_SURFACES = {
    "SGD": ("SGD", dict(lr=1e-3)),
    "Momentum": ("SGD", dict(lr=1e-3, momentum=0.9)),
    "Nesterov": ("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True)),
    "Adagrad": ("Adagrad", dict(lr=0.5)),
    "RMSprop": ("RMSprop", dict(lr=0.01)),
    "RMSprop+Nesterov": ("RMSprop", dict(lr=2e-3, momentum=0.9, nesterov=True)),
    "Adadelta": ("Adadelta", dict(lr=1.0)),
    "Adam": ("Adam", dict(lr=0.05)),
    "Adamax": ("Adamax", dict(lr=0.05)),
    "NAdam": ("NAdam", dict(lr=0.05)),
    "Ftrl": ("Ftrl", dict(lr=0.5)),
}
OPTIMIZERS = {
    "beale": _STEEP_SURFACES,
    "rosenbrock": _STEEP_SURFACES,
    "saddle": {
        "SGD": ("SGD", dict(lr=0.01)),
        "Momentum": ("SGD", dict(lr=0.01, momentum=0.9)),
        "Nesterov": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
        "Adagrad": ("Adagrad", dict(lr=0.1)),
        "RMSprop": ("RMSprop", dict(lr=0.01)),
        "RMSprop+Nesterov": ("RMSprop", dict(lr=0.01, momentum=0.9, nesterov=True)),
        "Adadelta": ("Adadelta", dict(lr=1.0)),
        "Adam": ("Adam", dict(lr=0.01)),
        "Adamax": ("Adamax", dict(lr=0.01)),
        "NAdam": ("NAdam", dict(lr=0.01)),
        "Ftrl": ("Ftrl", dict(lr=0.1)),
    },
}
OPTIMIZERS["himmelblau"] = _STEEP_SURFACES
OPTIMIZERS["ravine"] = {k: (c, dict(h, lr=h["lr"] * (4 if c == "SGD" else 2))) for k, (c, h) in
                        OPTIMIZERS["saddle"].items()}
STEPS = {"beale": 600, "rosenbrock": 2000, "himmelblau": 600, "saddle": 300, "ravine": 600}
TOL = 1e-3  # "reached": f − f_min < TOL (saddle: escaped, f < −1)


def run(surface, cls, hyper, steps):
    """The path (steps + 1, 2) of one optimizer; stops early if it leaves the picture for good."""
    p = nv.Parameter(surface.start)
    opt = getattr(nv.optimizers, cls)([p], **hyper)
    (x0, x1), (y0, y1) = surface.window
    span = max(x1 - x0, y1 - y0)
    path = [surface.start.copy()]
    for _ in range(steps):
        p.grad[...] = surface.grad(p.value)
        opt.step()
        xy = p.value.astype(np.float64)
        path.append(xy)
        if not np.all(np.isfinite(xy)) or np.abs(xy).max() > 10 * span:
            break
    return np.array(path)


def reached(surface, path):
    f = surface.f(path)
    ok = f < -1.0 if not np.isfinite(surface.f_min) else f - surface.f_min < TOL
    hit = np.flatnonzero(ok)
    return int(hit[0]) if len(hit) else None


def table(surface, paths):
    crit = "steps to f < -1 (escape)" if not np.isfinite(surface.f_min) else f"steps to f - f_min < {TOL:g}"
    rows = [f"| optimizer | final f | distance to minimum | {crit} |", "|---|---|---|---|"]
    for label, path in paths.items():
        end = path[-1]
        steps = reached(surface, path)
        dist = surface.distance_to_minimum(end)
        rows.append(f"| {label} | {surface.f(end):.4g} | {'-' if np.isinf(dist) else f'{dist:.3g}'} | "
                    f"{'not reached' if steps is None else steps} |")
    return "\n".join(rows)


def plot(surface, paths, out, gif, frames=30):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, Y, F = surface.grid(300)
    (x0, x1), (y0, y1) = surface.window
    fig, ax = plt.subplots(figsize=(8, 6.5))
    if np.isfinite(surface.f_min):
        levels = np.logspace(np.log10(max(F.min() - surface.f_min, 1e-2)), np.log10(F.max() - surface.f_min), 25)
        ax.contour(X, Y, F - surface.f_min, levels=levels, cmap="viridis", linewidths=0.7, alpha=0.6)
        ax.plot(surface.minima[:, 0], surface.minima[:, 1], "k*", ms=14, label="minimum")
    else:
        ax.contour(X, Y, F, levels=30, cmap="viridis", linewidths=0.7, alpha=0.6)
        ax.plot(surface.saddle_points[:, 0], surface.saddle_points[:, 1], "kx", ms=12, label="saddle point")
    colors = plt.cm.tab20(np.linspace(0, 1, len(paths)))
    lines = {}
    for (label, path), c in zip(paths.items(), colors):
        (lines[label],) = ax.plot(path[:, 0], path[:, 1], "-", color=c, lw=1.6, label=label)
    ax.plot(*surface.start, "ko", ms=6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(f"{surface.name}: {surface.description}")
    ax.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.85)
    png = os.path.join(out, f"optimizer_paths_{surface.name}.png")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    saved = [png]
    if gif:
        try:
            from matplotlib.animation import FuncAnimation, PillowWriter
            import PIL  # noqa: F401  (PillowWriter needs it)
        except ImportError:
            print("pillow is not installed: skipping the GIF (pip install pillow)")
        else:
            longest = max(len(p) for p in paths.values())
            ticks = np.unique(np.geomspace(1, longest, frames).astype(int))  # fast start, then slower
            heads = {label: ax.plot([], [], "o", color=line.get_color(), ms=5)[0] for label, line in lines.items()}

            def draw(k):
                for label, path in paths.items():
                    n = min(k, len(path))
                    lines[label].set_data(path[:n, 0], path[:n, 1])
                    heads[label].set_data(path[n - 1: n, 0], path[n - 1: n, 1])
                ax.set_title(f"{surface.name}: step {k - 1}")
                return list(lines.values()) + list(heads.values())

            anim = FuncAnimation(fig, draw, frames=list(ticks), blit=False)
            gif_path = os.path.join(out, f"optimizer_paths_{surface.name}.gif")
            anim.save(gif_path, writer=PillowWriter(fps=10), dpi=60)
            saved.append(gif_path)
    plt.close(fig)
    return saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for the PNG/GIF files (default: current dir)")
    ap.add_argument("--surfaces", nargs="+", default=["beale", "saddle"], choices=sorted(nv.surfaces.ALL))
    ap.add_argument("--no-gif", action="store_true", help="only the PNG pictures")
    ap.add_argument("--no-plot", action="store_true", help="only the tables")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("this example draws with matplotlib: pip install matplotlib pillow "
                             "(or run with --no-plot for the tables only)")
    for name in args.surfaces:
        surface = nv.surfaces.ALL[name]
        t0 = time.perf_counter()
        paths = {label: run(surface, cls, hyper, STEPS[name]) for label, (cls, hyper) in OPTIMIZERS[name].items()}
        print(f"\n## {name}: {surface.description}, start {tuple(float(v) for v in surface.start)}, {STEPS[name]} steps "
              f"({time.perf_counter() - t0:.2f} s for all optimizers)\n")
        print(table(surface, paths))
        if not args.no_plot:
            for path in plot(surface, paths, args.out, gif=not args.no_gif):
                print(f"saved {path}")


if __name__ == "__main__":
    main()
