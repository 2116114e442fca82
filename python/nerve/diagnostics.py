"""Per-layer training diagnostics: what the deep-learning playbook tells you to
look at when a deep net does not train (Glorot & Bengio, 2010).

``layer_stats(model, x, y)`` runs one training-mode forward and backward on
(x, y) with the compiled loss and reports, for every layer,

- ``act_mean``, ``act_std``: mean and std of the layer's output;
- ``saturated``: fraction of outputs in the flat tails (tanh: |y| > 0.99;
  sigmoid / hard_sigmoid: y < 0.01 or y > 0.99), None for other activations;
- ``dead``: fraction of units that output exactly 0 for every row of the batch
  (ReLU family: relu, relu6, crelu), None for other activations;
- ``out_grad_mean``, ``out_grad_std``: the back-propagated gradient
  dL/d(output) — the quantity whose variance vanishes or explodes with depth;
- ``grad_mean``, ``grad_std``, ``grad_norm`` (L2): of the layer's weight
  gradient dL/dW (the kernels; every parameter for layers without one), data
  loss only, None for layers without trainable parameters;
- ``weight_norm``: L2 norm of the same weights.

Nothing is changed: weights are not updated, the parameters' ``.grad``
contents, the model's random-step counter and layer state such as batch-norm
running statistics are saved and restored.
"""
import numpy as np

_SATURATING = {"tanh": "tanh", "sigmoid": "sigmoid", "logistic": "sigmoid", "hard_sigmoid": "sigmoid"}
_RELU_FAMILY = {"relu", "relu6", "crelu"}


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    return getattr(act, "name", None)


def _weights(layer):
    params = layer.parameters()
    kernels = [p for p in params if p.kind == "kernel"]
    return kernels or params


def _stats(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.mean()), float(a.std())


def layer_stats(model, x, y):
    """A list with one dict per layer (keys in the module docstring, plus
    ``index``, ``layer``, ``activation``, ``units``, ``trainable``).

    The model must be compiled (its loss gives dL/d output). Training-mode
    layers (dropout, noise) draw the masks the model's next step would use.
    """
    from .model import _as_x

    if getattr(model, "loss", None) is None:
        raise ValueError("layer_stats needs a compiled model: call model.compile(loss=...) first")
    x = _as_x(x, model.input_dim)
    if not np.all(np.isfinite(x)):
        raise ValueError("layer_stats: x contains NaN or Inf")
    if not model.built:
        model.build(x.shape[1])
    net = model._net
    params = model.parameters()
    saved_grads = [p.grad.copy() for p in params]
    saved_state = [a.copy() for layer in model.layers for a in layer._state_arrays()]
    saved_step = net.step
    seed, step = int(net.seed), int(net.step)
    try:
        for p in params:
            p.grad[...] = 0.0
        # Layer by layer, as Network.forward does: frozen layers run in inference mode.
        inputs, outputs, modes = [], [], []
        h = x
        for layer in model.layers:
            training = bool(layer.trainable)
            out = layer._core.forward_np(h, training, seed, step)
            inputs.append(h)
            outputs.append(out)
            modes.append(training)
            h = out
        dy = np.ascontiguousarray(model.loss.backward(h, y), dtype=np.float32).reshape(h.shape)
        out_grads = [None] * len(model.layers)
        for i in range(len(model.layers) - 1, -1, -1):
            out_grads[i] = dy
            layer = model.layers[i]
            dy = layer._core.backward_np(inputs[i], outputs[i], dy, modes[i], seed, step, i > 0)
        result = []
        for i, layer in enumerate(model.layers):
            out = outputs[i]
            act = _activation_name(layer)
            a_mean, a_std = _stats(out)
            g_mean, g_std = _stats(out_grads[i])
            entry = {"index": i, "layer": layer.describe(), "activation": act, "units": int(out.shape[1]),
                     "trainable": bool(layer.trainable), "act_mean": a_mean, "act_std": a_std,
                     "saturated": None, "dead": None, "out_grad_mean": g_mean, "out_grad_std": g_std,
                     "grad_mean": None, "grad_std": None, "grad_norm": None, "weight_norm": None}
            kind = _SATURATING.get(act)
            if kind == "tanh":
                entry["saturated"] = float(np.mean(np.abs(out) > 0.99))
            elif kind == "sigmoid":
                entry["saturated"] = float(np.mean((out < 0.01) | (out > 0.99)))
            if act in _RELU_FAMILY:
                entry["dead"] = float(np.mean(np.all(out == 0, axis=0)))
            weights = _weights(layer)
            if weights:
                w = np.concatenate([p.value.reshape(-1) for p in weights]).astype(np.float64)
                entry["weight_norm"] = float(np.sqrt(np.dot(w, w)))
                if layer.trainable:
                    g = np.concatenate([p.grad.reshape(-1) for p in weights]).astype(np.float64)
                    entry["grad_mean"], entry["grad_std"] = float(g.mean()), float(g.std())
                    entry["grad_norm"] = float(np.sqrt(np.dot(g, g)))
            result.append(entry)
        return result
    finally:
        for p, g in zip(params, saved_grads):
            p.grad[...] = g
        arrays = [a for layer in model.layers for a in layer._state_arrays()]
        for a, s in zip(arrays, saved_state):
            a[...] = s
        net.step = saved_step


_COLUMNS = [("index", "#", "{:d}"), ("layer", "layer", "{}"), ("activation", "act", "{}"),
            ("units", "units", "{:d}"), ("act_mean", "act mean", "{:+.3f}"), ("act_std", "act std", "{:.3f}"),
            ("saturated", "satur.", "{:.1%}"), ("dead", "dead", "{:.1%}"),
            ("out_grad_std", "dL/dy std", "{:.2e}"), ("grad_std", "dL/dW std", "{:.2e}"),
            ("grad_norm", "|dL/dW|", "{:.2e}"), ("weight_norm", "|W|", "{:.2f}")]


def format_table(stats):
    """The stats of layer_stats as an aligned text table (— where not applicable)."""
    header = [title for _, title, _ in _COLUMNS]
    rows = []
    for s in stats:
        row = []
        for key, _, fmt in _COLUMNS:
            v = s.get(key)
            if v is None:
                row.append("—")
            elif key == "layer" and not s.get("trainable", True):
                row.append(f"{v} (frozen)")
            else:
                row.append(fmt.format(v))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def print_table(stats, print_fn=print):
    text = format_table(stats)
    if print_fn:
        print_fn(text)
    return text


__all__ = ["layer_stats", "format_table", "print_table"]
