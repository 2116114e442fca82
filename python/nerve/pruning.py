"""Magnitude pruning (sparse models).

``prune_magnitude(model, sparsity, scope="layer")`` zeroes the fraction
``sparsity`` of kernel weights with the smallest |w| — in every layer
separately (``scope="layer"``) or ranked across all layers together
(``scope="global"``) — and installs a mask so the pruned weights stay exactly
zero while the model is fine-tuned: the fused training step re-zeroes them
right after every optimizer update (before max-norm constraints), and so does
``optimizer.step()`` on the manual path. Biases and batch-norm scales are
never pruned. Masks are saved with the model.

Pruning again with a higher sparsity keeps the earlier mask (weights once
pruned stay pruned). Works with any optimizer, L1/L2 penalties and FTRL.

References: Han et al., "Learning both Weights and Connections for Efficient
Neural Networks" (2015); Zhu & Gupta, "To prune, or not to prune" (2017).
"""
import numpy as np

from .model import Sequential

_SCOPES = ("layer", "global")


def _kernels(model):
    """[(layer label, Parameter)] for every kernel (Dense weights), sub-layers of Residual included."""
    if not isinstance(model, Sequential):
        raise ValueError(f"expected an nv.Sequential model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("build or train the model before pruning it")
    out = []

    def visit(layers, prefix):
        for i, layer in enumerate(layers):
            label = f"{prefix}{i}:{layer.describe()}"
            subs = getattr(layer, "layers", None)
            if subs is not None:
                visit(subs, label + "/")
                continue
            out.extend((label, p) for p in layer.parameters() if p.kind == "kernel")

    visit(model.layers, "")
    return out


def _mask_view(p):
    p._arena.enable_mask()
    return p._arena.mask(p._offset, p.size).reshape(p.shape)


def prune_magnitude(model, sparsity, scope="layer"):
    """Zeroes the ``sparsity`` fraction of smallest-magnitude kernel weights and
    keeps them zero in later training.

    sparsity: in [0, 1); the number pruned is round(sparsity · n) (per layer,
    or of all kernel weights for scope="global"); ties are broken by position.
    Returns ``sparsity(model)`` after pruning.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.integer, np.floating)) \
            or not np.isfinite(sparsity) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    kernels = _kernels(model)
    if not kernels:
        raise ValueError("the model has no kernel weights to prune")
    sparsity = float(sparsity)
    if scope == "layer":
        groups = [[p] for _, p in kernels]
    else:
        groups = [[p for _, p in kernels]]
    for group in groups:
        mags = np.concatenate([np.abs(p.value.reshape(-1)) for p in group])
        # Already-pruned weights rank first, so repeated pruning is cumulative.
        already = np.concatenate([(_mask_view(p).reshape(-1) == 0) if p._arena.has_mask
                                  else np.zeros(p.size, bool) for p in group])
        mags[already] = -1.0
        k = int(round(sparsity * mags.size))
        if k == 0:
            continue
        drop = np.argsort(mags, kind="stable")[:k]
        keep = np.ones(mags.size, np.float32)
        keep[drop] = 0.0
        keep[already] = 0.0
        offset = 0
        for p in group:
            m = keep[offset: offset + p.size].reshape(p.shape)
            offset += p.size
            _mask_view(p)[...] = m
            p.value[m == 0] = 0.0
    return _report(model)


def sparsity(model):
    """Fraction of kernel weights that are exactly zero.

    Returns ``{"overall": float, "zeros": int, "weights": int, "layers":
    [{"layer": label, "zeros": int, "weights": int, "sparsity": float}, ...]}``,
    one entry per kernel (labels are "index:name", "i:Residual/j:Dense" inside
    residual blocks).
    """
    return _report(model)


def _report(model):
    rows = []
    for label, p in _kernels(model):
        zeros = int(np.count_nonzero(p.value == 0))
        rows.append({"layer": label, "zeros": zeros, "weights": int(p.size),
                     "sparsity": zeros / p.size if p.size else 0.0})
    total = sum(r["weights"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "weights": total, "layers": rows}
