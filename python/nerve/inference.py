"""Predict-only models for fast inference: ``model.optimize_for_inference()``.

What the optimized model does differently from ``model.predict``:

1. **Dropout, AlphaDropout and GaussianNoise are removed** (they are the
   identity at inference).
2. **BatchNorm is folded** into the Dense (or Maxout) next to it. In
   inference form BatchNorm is the per-feature affine map
   ``y = s·x + t`` with ``s = γ/√(running_var + eps)`` and
   ``t = β − s·running_mean``. After a Dense with no activation,
   ``s·(xW + b) + t = x(W·diag(s)) + (s·b + t)``; before a Dense (or Maxout),
   ``(s·x + t)W + b = x(diag(s)·W) + (tW + b)``. The folded weights are
   computed in float64 and rounded once, so predictions agree with
   ``model.predict`` within float32 rounding. A BatchNorm with neither
   neighbour (after an activation and before a non-affine layer) stays.
3. **Pruned kernels run sparse.** A Dense kernel with at least
   ``sparse_threshold`` of its weights exactly zero (``nv.pruning``) becomes
   a ``SparseDense`` C++ layer: CSR for batches of 2 and more (rows
   transposed in panels of 32, one broadcast weight times 32 inputs per
   nonzero), sliced ELLPACK with AVX2 gathers for single rows; threaded over
   row panels (or output groups), allocation-free after the first call, and
   thread-count invariant. The default threshold, 0.65, is just above where
   the sparse product overtook the dense one at batches of 16 and 256 on the
   reference machine (~0.62); for single rows it only wins from ~0.87, so a
   sparse layer below that keeps a dense copy for them
   (docs/interop.md, "Fast inference").

4. **Dense kernels stay packed.** The GEMM copies a kernel into its
   micro-panel layout on every product; the predict-only model packs each
   dense kernel once (``report["packed"]``) and its products read that copy
   (the same panels, so the same bits as ``model.predict``). Batches of 2-16
   (2-32 at the avx512 level) take the unpacked skinny kernel and single
   rows a matrix-vector product, as in ``model.predict``.

The result has ``predict(x, batch_size=256)`` (and ``__call__``),
``input_dim``, ``output_dim``, ``summary()`` and ``report`` (what was
folded, removed and made sparse); it cannot train.
"""
import numpy as np

from . import _core, activations, layers as L

# Measured on the reference machine (1 thread, the 784-512-256-10 MLP
# pruned to each level, bench/inference.py's timer): the sparse product
# overtakes the dense one from about 0.62 sparsity at batches of 16 and 256,
# but only from about 0.87 for a single row, where dense GEMV streams the
# kernel at full bandwidth and every nonzero costs the sparse product a
# gather. Between the two, a sparse layer keeps a dense copy for single rows.
SPARSE_THRESHOLD = 0.65
SINGLE_ROW_THRESHOLD = 0.87


class _Affine:
    """An inference-form BatchNorm: y = scale·x + shift (float64)."""

    def __init__(self, bn):
        inv = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
        self.scale = bn.gamma.value.astype(np.float64) * inv
        self.shift = bn.beta.value.astype(np.float64) - self.scale * bn.running_mean.astype(np.float64)
        self.source = bn


class _Dense:
    """A Dense or Maxout in float64 while folding: kernel (in, cols), bias or None."""

    def __init__(self, layer):
        self.maxout = type(layer) is L.Maxout
        self.pieces = layer.pieces if self.maxout else 1
        self.units = layer.units
        self.activation = None if self.maxout else layer.activation
        self.kernel = layer.kernel.value.astype(np.float64)
        self.bias = layer.bias.value.astype(np.float64) if layer.use_bias else None
        self.folded = []  # names of the BatchNorm layers folded in

    @property
    def identity(self):
        return not self.maxout and self.activation.name == "identity"

    def fold_after(self, bn):
        """self then bn  ->  one Dense (needs an identity activation)."""
        self.kernel = self.kernel * bn.scale[None, :]
        self.bias = bn.shift + (bn.scale * self.bias if self.bias is not None else 0.0)
        self.folded.append(bn.source.describe())

    def fold_before(self, bn):
        """bn then self  ->  one Dense (or Maxout)."""
        b = bn.shift @ self.kernel
        self.kernel = bn.scale[:, None] * self.kernel
        self.bias = b + (self.bias if self.bias is not None else 0.0)
        self.folded.append(bn.source.describe())


def _plan(layers, report, prefix):
    """The layer list with noise removed and BatchNorm folded where it can be."""
    ops = []
    for i, layer in enumerate(layers):
        label = f"{prefix}{i}:{layer.describe()}"
        t = type(layer)
        if t in (L.Dropout, L.AlphaDropout, L.GaussianNoise):
            report["removed"].append(label)
        elif t in (L.Dense, L.Maxout):
            ops.append(_Dense(layer))
        elif t is L.BatchNorm:
            ops.append(_Affine(layer))
        elif t is L.Residual:
            ops.append(("residual", _plan(layer.layers, report, label + "/")))
        else:
            ops.append(layer)
    out = []
    for op in ops:  # BatchNorm into the Dense before it (when nothing sits between)
        if isinstance(op, _Affine) and out and isinstance(out[-1], _Dense) and out[-1].identity:
            out[-1].fold_after(op)
            report["folded"].append(op.source.describe())
        else:
            out.append(op)
    final = []
    for op in reversed(out):  # ... else into the Dense (or Maxout) after it
        if isinstance(op, _Affine) and final and isinstance(final[-1], _Dense):
            final[-1].fold_before(op)
            report["folded"].append(op.source.describe())
        else:
            final.append(op)
    return final[::-1]


def _sparsity(kernel):
    return float(np.count_nonzero(kernel == 0)) / kernel.size


def _build(ops, width, threshold, arena_layers, report, prefix=""):
    """[C++ layer] for the planned ops, input width `width`; returns (cores, width)."""
    cores = []
    for i, op in enumerate(ops):
        if isinstance(op, _Dense):
            kernel = np.ascontiguousarray(op.kernel, dtype=np.float32)
            bias = None if op.bias is None else np.ascontiguousarray(op.bias, dtype=np.float32)
            sparsity = _sparsity(kernel)
            label = f"{prefix}{i}"
            if not op.maxout and sparsity >= threshold:
                single_dense = sparsity < SINGLE_ROW_THRESHOLD
                core = _core.SparseDense(kernel, bias, op.activation._spec, single_dense)
                report["sparse"].append({"layer": label, "sparsity": sparsity, "nnz": int(core.nnz),
                                         "single_rows": "dense" if single_dense else "sparse"})
            else:
                if op.maxout:
                    layer = L.Maxout(op.units, op.pieces, use_bias=bias is not None)
                else:
                    layer = L.Dense(op.units, activation=op.activation, use_bias=bias is not None)
                layer.build(width)
                arena_layers.append((layer, [kernel] + ([bias] if bias is not None else [])))
                core = layer._core
                report["dense"].append({"layer": label, "sparsity": sparsity})
        elif isinstance(op, _Affine):  # a BatchNorm nothing could absorb: keep it
            layer = op.source.copy()
            layer.build(width)
            arena_layers.append((layer, [p.value for p in op.source.parameters()]))
            core = layer._core
            for mine, theirs in zip(layer.buffers(), op.source.buffers()):
                mine[...] = theirs
        elif isinstance(op, tuple) and op[0] == "residual":
            body, w = _build(op[1], width, threshold, arena_layers, report, f"{prefix}{i}/")
            core = _core.Residual(body)
        else:
            layer = op.copy()
            layer.build(width)
            if op.parameters():
                arena_layers.append((layer, [p.value for p in op.parameters()]))
            core = layer._core
        core.trainable = False
        cores.append(core)
        width = int(core.out_features)
    return cores, width


class InferenceModel:
    """A predict-only model made by ``Sequential.optimize_for_inference()``."""

    def __init__(self, model, sparse_threshold=SPARSE_THRESHOLD):
        from .model import Sequential
        if not isinstance(model, Sequential) or not model.built:
            raise ValueError("optimize_for_inference needs a built nv.Sequential model")
        if isinstance(sparse_threshold, bool) or not isinstance(sparse_threshold, (int, float)) \
                or not 0.0 <= sparse_threshold <= 1.0:
            raise ValueError(f"sparse_threshold must be a number in [0, 1], got {sparse_threshold!r}")
        seq = next((l for l in model.layers if L._is_sequence_layer(l)), None)
        if seq is not None:
            raise ValueError(f"optimize_for_inference: layer {seq.describe()} (sequences) has no optimized "
                             f"form yet; use model.predict")
        self.report = {"removed": [], "folded": [], "sparse": [], "dense": [], "packed": []}
        ops = _plan(model.layers, self.report, "")
        arena_layers = []
        cores, width = _build(ops, model.input_dim, float(sparse_threshold), arena_layers, self.report)
        total = sum(layer.param_size() for layer, _ in arena_layers)
        self._arena = _core.Arena(max(total, 1))
        offset = 0
        for layer, values in arena_layers:
            offset = layer._bind(self._arena, offset, init=False)
            for p, v in zip(layer.parameters(), values):
                p.value = v
        for layer, _ in arena_layers:
            # The weights are final now: dense kernels stay packed for the
            # GEMM, which then skips packing them on every call (the same bits).
            dense = layer._core.inner if isinstance(layer, L.Maxout) else layer._core
            if isinstance(dense, _core.Dense):
                dense.pack_kernel()
                if dense.kernel_packed:
                    self.report["packed"].append(layer.describe())
        self._cores = cores
        self._net = _core.Network(int(model.input_dim), cores)
        self.input_dim = int(model.input_dim)
        self.output_dim = width
        self.name = model.name

    def predict(self, x, batch_size=256):
        """Outputs for x, in batches of `batch_size` rows (as Sequential.predict)."""
        from .model import _as_x
        if not (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous):
            x = _as_x(x, self.input_dim)  # the fast path skips only conversions that are no-ops
        return self._net.predict(x, int(batch_size))

    __call__ = predict

    def fit(self, *args, **kwargs):
        raise RuntimeError("an optimize_for_inference() model is predict-only; train the original model")

    train_step = fit

    def summary(self, print_fn=print):
        lines = [f'Inference model "{self.name or "sequential"}": {self.input_dim} -> {self.output_dim}']
        for core in self._cores:
            lines.append(f"  {core.type:<14} {core.in_features:>6} -> {core.out_features:<6}")
        r = self.report
        lines.append(f"  removed: {', '.join(r['removed']) or 'none'}; BatchNorm folded: "
                     f"{', '.join(r['folded']) or 'none'}; sparse kernels: "
                     + (", ".join(f"{s['layer']} ({s['sparsity']:.0%})" for s in r["sparse"]) or "none"))
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text


def optimize(model, sparse_threshold=SPARSE_THRESHOLD):
    """``model.optimize_for_inference(sparse_threshold=0.65)``: see the module docstring."""
    return InferenceModel(model, sparse_threshold=sparse_threshold)
