"""PyTorch (and Keras 3) interop: weights and whole networks in and out.

``from_torch(module, input_dim=None)`` builds the nerve model of a
``torch.nn.Sequential`` of ``Linear``, the activations nerve has,
``PReLU``, ``BatchNorm1d``, ``Dropout`` / ``AlphaDropout`` and ``Identity``
(nested Sequentials are flattened); ``to_torch(model)`` goes the other way.
Weights and buffers (BatchNorm running statistics, ``num_batches_tracked``)
come along; predictions agree within float32 rounding (the tests check 1e-5).
``load_state_dict(model, state_dict)`` copies a plain PyTorch state_dict into
a matching nerve model.

Conventions that differ:

- Dense kernels are ``(in, out)`` (``y = x @ W + b``); ``nn.Linear.weight``
  is ``(out, in)`` (``y = x @ W.T + b``): the kernel is the transpose.
- BatchNorm follows PyTorch already (``momentum=0.1`` weights the new batch,
  the running variance is unbiased), so ``momentum`` and ``eps`` copy as
  they are. Keras's ``momentum=0.99`` weights the old value: nerve's is
  ``1 - 0.99 = 0.01`` (``from_keras`` / ``to_keras`` convert).
- An activation directly after a Linear becomes that Dense's fused
  activation (one layer in nerve, two modules in torch); ``to_torch`` writes
  it back as a separate module, so indices of a state_dict follow torch's
  layout: ``Linear, ReLU, Linear`` is ``0.weight``, ``2.weight``.
- Layers torch has no module for (CReLU, binary step, Swish with β ≠ 1 or a
  learned β, Maxout, GaussianNoise, Residual) become small modules from
  ``nerve._torch_modules``, which ``from_torch`` reads back.
"""
import numpy as np

from . import layers as L
from .model import Sequential


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nv.interop's PyTorch functions need torch installed") from e
    return torch


def _np(t):
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        t = t.numpy()
    return np.asarray(t)


# ---------------------------------------------------------------------------
# torch -> nerve

def _torch_activation(m, nn):
    """(nerve activation name, params) for a torch activation module, or None."""
    t = type(m)
    simple = {nn.ReLU: "relu", nn.SELU: "selu", nn.SiLU: "swish", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
              nn.Mish: "mish", nn.Hardswish: "hard_swish", nn.Hardsigmoid: "hard_sigmoid", nn.ReLU6: "relu6"}
    if t in simple:
        return simple[t], {}
    if t is nn.LeakyReLU:
        return "leaky_relu", {"alpha": float(m.negative_slope)}
    if t is nn.ELU:
        return "elu", {"alpha": float(m.alpha)}
    if t is nn.GELU:
        return "gelu", {"approximate": m.approximate}
    if t is nn.Softplus:
        return "softplus", {"beta": float(m.beta), "threshold": float(m.threshold)}
    if t is nn.RReLU:
        return "rrelu", {"lower": float(m.lower), "upper": float(m.upper)}
    if t in (nn.Softmax, nn.LogSoftmax):
        if m.dim not in (1, -1):
            raise ValueError(f"{t.__name__}(dim={m.dim}): only the feature axis (dim=1 or -1) maps to nerve")
        return ("softmax" if t is nn.Softmax else "log_softmax"), {}
    return None


def _flatten(module, nn):
    if isinstance(module, nn.Sequential):
        out = []
        for child in module:
            out.extend(_flatten(child, nn))
        return out
    return [module]


def _from_modules(mods, nn, tm, where):
    """[(nerve layer, [(target attr path, array)])] for a list of torch modules."""
    specs = []  # (layer, values: list of (getter(layer) -> ndarray view, array))
    for i, m in enumerate(mods):
        label = f"{where}{i} ({type(m).__name__})"
        act = _torch_activation(m, nn)
        if act is None and tm is not None:
            if type(m) is tm.CReLU:
                act = ("crelu", {})
            elif type(m) is tm.BinaryStep:
                act = ("binary_step", {"straight_through": m.straight_through})
            elif type(m) is tm.Swish and not m.learnable:
                act = ("swish", {"beta": float(_np(m.beta).reshape(-1)[0])})
        if act is not None:
            prev = specs[-1][0] if specs else None
            if type(prev) is L.Dense and prev.activation.name == "identity":
                prev.activation = L.activations.get(act[0], **act[1])  # fused into the Dense's tail
            else:
                specs.append((L.Activation(act[0], **act[1]), []))
        elif isinstance(m, nn.Identity) or (isinstance(m, nn.Flatten) and m.start_dim in (1, -1)):
            continue
        elif type(m) is nn.Linear:
            specs.append((L.Dense(m.out_features, use_bias=m.bias is not None),
                          [("kernel", _np(m.weight).T)] + ([("bias", _np(m.bias))] if m.bias is not None else [])))
        elif type(m) is nn.BatchNorm1d:
            if not m.track_running_stats or m.running_mean is None:
                raise ValueError(f"{label}: track_running_stats=False uses batch statistics at inference, "
                                 f"which nerve's BatchNorm does not")
            n = m.num_features
            vals = [("gamma", _np(m.weight) if m.affine else np.ones(n, np.float32)),
                    ("beta", _np(m.bias) if m.affine else np.zeros(n, np.float32)),
                    ("running_mean", _np(m.running_mean)), ("running_var", _np(m.running_var)),
                    ("num_batches_tracked", np.array([float(_np(m.num_batches_tracked))], np.float32))]
            specs.append((L.BatchNorm(momentum=m.momentum, eps=m.eps), vals))
        elif type(m) is nn.Dropout:
            specs.append((L.Dropout(m.p), []))
        elif type(m) is nn.AlphaDropout:
            specs.append((L.AlphaDropout(m.p), []))
        elif type(m) is nn.PReLU:
            specs.append((L.PReLU(shared=m.num_parameters == 1), [("alpha", _np(m.weight).reshape(-1))]))
        elif tm is not None and type(m) is tm.Swish:  # learnable (the fixed one is an activation above)
            beta = float(_np(m.beta).reshape(-1)[0])
            specs.append((L.Swish(beta=beta, learnable=True), [("beta", np.array([beta], np.float32))]))
        elif tm is not None and type(m) is tm.Maxout:
            lin = m.linear
            specs.append((L.Maxout(m.units, m.pieces, use_bias=lin.bias is not None),
                          [("kernel", _np(lin.weight).T)] + ([("bias", _np(lin.bias))] if lin.bias is not None else [])))
        elif tm is not None and type(m) is tm.GaussianNoise:
            specs.append((L.GaussianNoise(m.stddev), []))
        elif tm is not None and type(m) is tm.Residual:
            inner = _from_modules(_flatten(m.body, nn), nn, tm, f"{where}{i}.body.")
            specs.append((L.Residual([layer for layer, _ in inner]), inner))
        else:
            raise ValueError(f"from_torch: module {label} has no nerve equivalent (supported: Linear, "
                             f"BatchNorm1d, Dropout, AlphaDropout, PReLU, Identity, the activations "
                             f"ReLU, LeakyReLU, ELU, SELU, GELU, SiLU, Sigmoid, Tanh, Softplus, Mish, "
                             f"Hardswish, Hardsigmoid, ReLU6, RReLU, Softmax, LogSoftmax, and "
                             f"nerve._torch_modules)")
    return specs


def _targets(layer):
    """{name: writable view} of a built layer's parameters and buffers."""
    out = {p.name: p.value for p in layer.parameters()}
    if isinstance(layer, L.BatchNorm):
        out.update(zip(["running_mean", "running_var", "num_batches_tracked"], layer.buffers()))
    return out


def _assign(specs):
    for layer, values in specs:
        if isinstance(layer, L.Residual):
            _assign(values)
            continue
        targets = _targets(layer)
        for name, arr in values:
            view = targets[name]
            arr = np.asarray(arr, dtype=np.float32).reshape(view.shape)
            view[...] = arr


def _first_width(mods, nn, tm):
    for m in mods:
        if type(m) is nn.Linear:
            return m.in_features
        if type(m) is nn.BatchNorm1d:
            return m.num_features
        if tm is not None and type(m) is tm.Maxout:
            return m.linear.in_features
        if tm is not None and type(m) is tm.Residual:
            w = _first_width(_flatten(m.body, nn), nn, tm)
            if w:
                return w
    return None


def from_torch(module, input_dim=None):
    """The nerve ``Sequential`` equivalent to a ``torch.nn.Sequential`` (a
    single module or a list of modules work too), with its weights and
    buffers. input_dim defaults to the first Linear's in_features (or
    BatchNorm1d's num_features). Raises ValueError naming a module with no
    nerve equivalent."""
    torch = _torch()
    nn = torch.nn
    try:
        from . import _torch_modules as tm
    except ImportError:  # pragma: no cover
        tm = None
    if isinstance(module, (list, tuple)):
        mods = [c for m in module for c in _flatten(m, nn)]
    elif isinstance(module, nn.Module):
        mods = _flatten(module, nn)
    else:
        raise ValueError(f"from_torch takes a torch.nn.Module (a Sequential), got {type(module).__name__}")
    if input_dim is None:
        input_dim = _first_width(mods, nn, tm)
        if input_dim is None:
            raise ValueError("from_torch: give input_dim (the network has no Linear or BatchNorm1d to read it from)")
    specs = _from_modules(mods, nn, tm, "")
    if not specs:
        raise ValueError("from_torch: the module has no layers nerve can build")
    model = Sequential([layer for layer, _ in specs], input_dim=int(input_dim))
    _assign(specs)
    return model


# ---------------------------------------------------------------------------
# nerve -> torch

def _act_module(act, nn, tm):
    from .onnx import _act_params
    p = _act_params(act)
    name = act.name
    simple = {"relu": nn.ReLU, "selu": nn.SELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "mish": nn.Mish,
              "hard_swish": nn.Hardswish, "hard_sigmoid": nn.Hardsigmoid, "relu6": nn.ReLU6}
    if name == "identity":
        return None
    if name in simple:
        return simple[name]()
    if name == "leaky_relu":
        return nn.LeakyReLU(float(p["alpha"]))
    if name == "elu":
        return nn.ELU(float(p["alpha"]))
    if name == "gelu":
        return nn.GELU(approximate="tanh" if p["approximate"] in ("tanh", 1, 1.0) else "none")
    if name == "softplus":
        return nn.Softplus(beta=float(p["beta"]), threshold=float(p["threshold"]))
    if name == "rrelu":
        return nn.RReLU(float(p["lower"]), float(p["upper"]))
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "log_softmax":
        return nn.LogSoftmax(dim=1)
    if name == "swish":
        beta = float(p["beta"])
        return nn.SiLU() if beta == 1.0 else tm.Swish(beta, learnable=False)
    if name == "crelu":
        return tm.CReLU()
    if name == "binary_step":
        return tm.BinaryStep(bool(p["straight_through"]))
    raise ValueError(f"to_torch: activation {name!r} has no torch equivalent in nv.interop")


def _to_modules(layers, torch, tm, where):
    nn = torch.nn
    mods = []
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731 (a copy)
    for i, layer in enumerate(layers):
        label = f"layer {where}{i} ({layer.describe()})"
        if type(layer) is L.Maxout:
            m = tm.Maxout(layer.input_dim, layer.units, layer.pieces, bias=layer.use_bias)
            with torch.no_grad():
                m.linear.weight.copy_(t(layer.kernel.value.T))
                if layer.use_bias:
                    m.linear.bias.copy_(t(layer.bias.value))
            mods.append(m)
        elif type(layer) is L.Dense:
            m = nn.Linear(layer.input_dim, layer.units, bias=layer.use_bias)
            with torch.no_grad():
                m.weight.copy_(t(layer.kernel.value.T))
                if layer.use_bias:
                    m.bias.copy_(t(layer.bias.value))
            mods.append(m)
            a = _act_module(layer.activation, nn, tm)
            if a is not None:
                mods.append(a)
        elif type(layer) is L.Activation:
            a = _act_module(layer.activation, nn, tm)
            mods.append(a if a is not None else nn.Identity())
        elif type(layer) is L.BatchNorm:
            m = nn.BatchNorm1d(layer.input_dim, eps=layer.eps, momentum=layer.momentum)
            mean, var, tracked = layer.buffers()
            with torch.no_grad():
                m.weight.copy_(t(layer.gamma.value))
                m.bias.copy_(t(layer.beta.value))
                m.running_mean.copy_(t(mean))
                m.running_var.copy_(t(var))
                m.num_batches_tracked.fill_(int(tracked[0]))
            mods.append(m)
        elif type(layer) is L.AlphaDropout:
            mods.append(nn.AlphaDropout(layer.rate))
        elif type(layer) is L.Dropout:
            mods.append(nn.Dropout(layer.rate))
        elif type(layer) is L.GaussianNoise:
            mods.append(tm.GaussianNoise(layer.stddev))
        elif type(layer) is L.PReLU:
            m = nn.PReLU(num_parameters=1 if layer.shared else layer.input_dim)
            with torch.no_grad():
                m.weight.copy_(t(layer.alpha.value))
            mods.append(m)
        elif type(layer) is L.Swish:
            beta = float(layer.beta.value[0]) if layer.learnable else layer.beta_init
            mods.append(tm.Swish(beta, learnable=layer.learnable))
        elif type(layer) is L.Residual:
            mods.append(tm.Residual(nn.Sequential(*_to_modules(layer.layers, torch, tm, f"{where}{i}/"))))
        else:
            raise ValueError(f"to_torch: {label}: layer class {type(layer).__name__} has no torch "
                             f"equivalent in nv.interop")
    return mods


def to_torch(model):
    """The model as a ``torch.nn.Sequential`` in eval mode (float32), with its
    weights and buffers copied (not shared)."""
    torch = _torch()
    from . import _torch_modules as tm
    if not isinstance(model, Sequential):
        raise ValueError(f"to_torch takes an nv.Sequential model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("build or train the model before converting it")
    seq = torch.nn.Sequential(*_to_modules(model.layers, torch, tm, ""))
    return seq.eval()


# ---------------------------------------------------------------------------
# Plain state_dicts

def _torch_groups(layers):
    """[(torch param names in module order, {torch name: (view, transpose)})],
    one group per torch module with tensors, in the order to_torch lays them out."""
    groups = []
    for layer in layers:
        if isinstance(layer, L.Residual):
            groups.extend(_torch_groups(layer.layers))
        elif isinstance(layer, L.Dense):  # Dense and Maxout
            g = {"weight": (layer.kernel.value, True)}
            if layer.use_bias:
                g["bias"] = (layer.bias.value, False)
            groups.append(g)
        elif isinstance(layer, L.BatchNorm):
            mean, var, tracked = layer.buffers()
            groups.append({"weight": (layer.gamma.value, False), "bias": (layer.beta.value, False),
                           "running_mean": (mean, False), "running_var": (var, False),
                           "num_batches_tracked": (tracked, False)})
        elif isinstance(layer, L.PReLU):
            groups.append({"weight": (layer.alpha.value, False)})
        elif isinstance(layer, L.Swish) and layer.learnable:
            groups.append({"beta": (layer.beta.value, False)})
        elif layer.parameters():
            raise ValueError(f"load_state_dict: layer {layer.describe()} has no torch layout in nv.interop")
    return groups


def load_state_dict(model, state_dict, strict=True):
    """Copies a PyTorch state_dict (``module.state_dict()``: torch tensors or
    numpy arrays) into a matching nerve model.

    Matching is by order: the state_dict's modules (key prefixes before the
    last dot, in the dict's order) pair with the model's layers that hold
    tensors, in layer order, so indices and prefixes (``0.weight``,
    ``net.3.weight``) do not matter; within a module the tensor names must be
    torch's (weight, bias; BatchNorm's running_mean, running_var,
    num_batches_tracked). Linear weights are transposed to nerve's (in, out)
    kernels. Every shape is checked before anything is written.
    strict=False lets a BatchNorm group lack ``num_batches_tracked``.
    """
    if not isinstance(model, Sequential) or not model.built:
        raise ValueError("load_state_dict takes a built nv.Sequential model")
    if not hasattr(state_dict, "items"):
        raise ValueError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    sd_groups, order = {}, []
    for key, value in state_dict.items():
        prefix, _, leaf = str(key).rpartition(".")
        if prefix not in sd_groups:
            sd_groups[prefix] = {}
            order.append(prefix)
        sd_groups[prefix][leaf] = value
    mine = _torch_groups(model.layers)
    if len(order) != len(mine):
        raise ValueError(f"load_state_dict: the state_dict has {len(order)} modules with tensors "
                         f"({', '.join(order) or 'none'}), the model has {len(mine)} layers with tensors")
    writes = []
    for prefix, targets in zip(order, mine):
        given = sd_groups[prefix]
        needed = set(targets)
        if not strict and "num_batches_tracked" in needed and "num_batches_tracked" not in given:
            needed.discard("num_batches_tracked")
        if set(given) != needed:
            raise ValueError(f"load_state_dict: module {prefix!r} has tensors {sorted(given)}, the "
                             f"matching nerve layer needs {sorted(needed)}")
        for leaf in needed:
            view, transpose = targets[leaf]
            arr = _np(given[leaf]).astype(np.float32)
            if transpose:
                arr = arr.T
            if leaf == "num_batches_tracked":
                arr = arr.reshape(1)
            if arr.shape != view.shape:
                want = view.shape[::-1] if transpose else view.shape
                raise ValueError(f"load_state_dict: {prefix}.{leaf} has shape {_np(given[leaf]).shape}, "
                                 f"the model needs {want}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"load_state_dict: {prefix}.{leaf} contains NaN or Inf")
            writes.append((view, arr))
    for view, arr in writes:
        view[...] = arr
    return model


# ---------------------------------------------------------------------------
# Keras 3 (any backend; the tests use KERAS_BACKEND=torch)

def _keras():
    try:
        import keras
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nv.interop's Keras functions need keras (3.x) installed") from e
    return keras


# Keras activation names (as keras.activations.serialize gives them) -> nerve.
# Keras's string "leaky_relu" means negative_slope=0.2; its softplus has no
# threshold (nerve's default threshold 20 differs from log1p(exp(x)) by less
# than float32 rounding there).
_KERAS_ACTS = {"linear": ("identity", {}), "relu": ("relu", {}), "sigmoid": ("sigmoid", {}),
               "tanh": ("tanh", {}), "elu": ("elu", {}), "selu": ("selu", {}), "silu": ("swish", {}),
               "swish": ("swish", {}), "gelu": ("gelu", {}), "softplus": ("softplus", {}),
               "mish": ("mish", {}), "hard_sigmoid": ("hard_sigmoid", {}), "hard_silu": ("hard_swish", {}),
               "hard_swish": ("hard_swish", {}), "relu6": ("relu6", {}), "softmax": ("softmax", {}),
               "log_softmax": ("log_softmax", {}), "leaky_relu": ("leaky_relu", {"alpha": 0.2})}


def gelu_tanh(x):
    """GELU's tanh form for Keras (a named function, so the model serializes)."""
    return _keras().activations.gelu(x, approximate=True)


def _keras_act_name(fn, label):
    if fn is gelu_tanh:
        return "gelu", {"approximate": "tanh"}
    keras = _keras()
    name = keras.activations.serialize(fn)
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    if name not in _KERAS_ACTS:
        raise ValueError(f"from_keras: {label}: activation {name!r} has no nerve equivalent "
                         f"(supported: {', '.join(sorted(_KERAS_ACTS))})")
    return _KERAS_ACTS[name]


def from_keras(model):
    """The nerve ``Sequential`` equivalent to a built ``keras.Sequential`` of
    Dense, BatchNormalization, Dropout, AlphaDropout, GaussianNoise,
    Activation, ReLU / LeakyReLU / ELU / Softmax / PReLU layers, with weights
    and moving statistics. Keras's BatchNormalization ``momentum`` (weight of
    the old value, default 0.99) becomes nerve's ``1 - momentum``."""
    keras = _keras()
    KL = keras.layers
    layers, values = [], []
    input_dim = None
    for i, kl in enumerate(model.layers):
        label = f"layer {i} ({type(kl).__name__} {kl.name!r})"
        weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in kl.weights]
        act = None
        if type(kl) is KL.InputLayer:
            continue
        if type(kl) is KL.Dense:
            input_dim = input_dim or int(weights[0].shape[0])
            name, params = _keras_act_name(kl.activation, label)
            layers.append(L.Dense(kl.units, activation=L.activations.get(name, **params), use_bias=kl.use_bias))
            values.append([("kernel", weights[0])] + ([("bias", weights[1])] if kl.use_bias else []))
            continue
        if type(kl) is KL.BatchNormalization:
            if kl.axis not in (-1, [-1], 1, [1]) or getattr(kl, "renorm", False):
                raise ValueError(f"from_keras: {label}: only feature-axis batch norm without renorm maps to nerve")
            n = int(weights[-1].shape[0])
            input_dim = input_dim or n
            it = iter(weights)
            gamma = next(it) if kl.scale else np.ones(n, np.float32)
            beta = next(it) if kl.center else np.zeros(n, np.float32)
            mean, var = next(it), next(it)
            layers.append(L.BatchNorm(momentum=1.0 - float(kl.momentum), eps=float(kl.epsilon)))
            values.append([("gamma", gamma), ("beta", beta), ("running_mean", mean), ("running_var", var)])
            continue
        if type(kl) is KL.Dropout:
            layers.append(L.Dropout(float(kl.rate)))
        elif type(kl) is getattr(KL, "AlphaDropout", None):
            layers.append(L.AlphaDropout(float(kl.rate)))
        elif type(kl) is KL.GaussianNoise:
            layers.append(L.GaussianNoise(float(kl.stddev)))
        elif type(kl) is KL.PReLU:
            a = weights[0].reshape(-1)
            layers.append(L.PReLU(shared=a.size == 1))
            values.append([("alpha", a)])
            continue
        elif type(kl) is KL.Activation:
            act = _keras_act_name(kl.activation, label)
        elif type(kl) is KL.ReLU:
            if kl.max_value is None and not kl.threshold:
                act = ("leaky_relu", {"alpha": float(kl.negative_slope)}) if kl.negative_slope else ("relu", {})
            elif kl.max_value == 6 and not kl.threshold and not kl.negative_slope:
                act = ("relu6", {})
            else:
                raise ValueError(f"from_keras: {label}: ReLU(max_value={kl.max_value}, threshold={kl.threshold}) "
                                 f"has no nerve equivalent")
        elif type(kl) is KL.LeakyReLU:
            act = ("leaky_relu", {"alpha": float(kl.negative_slope)})
        elif type(kl) is KL.ELU:
            act = ("elu", {"alpha": float(kl.alpha)})
        elif type(kl) is KL.Softmax:
            act = ("softmax", {})
        else:
            raise ValueError(f"from_keras: {label} has no nerve equivalent (supported: Dense, "
                             f"BatchNormalization, Dropout, AlphaDropout, GaussianNoise, PReLU, "
                             f"Activation, ReLU, LeakyReLU, ELU, Softmax)")
        if act is not None:
            prev = layers[-1] if layers else None
            if type(prev) is L.Dense and prev.activation.name == "identity":
                prev.activation = L.activations.get(act[0], **act[1])
                continue
            layers.append(L.Activation(act[0], **act[1]))
        values.append([])
    if input_dim is None:
        shape = getattr(model, "input_shape", None)
        input_dim = shape[-1] if shape else None
    if not layers or input_dim is None:
        raise ValueError("from_keras: the model has no layers nerve can build (or its input width is unknown)")
    out = Sequential(layers, input_dim=int(input_dim))
    _assign(list(zip(layers, values)))
    return out


def _keras_act(act, label):
    from .onnx import _act_params
    p = _act_params(act)
    name = act.name
    keras = _keras()
    direct = {"identity": "linear", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "selu": "selu",
              "mish": "mish", "hard_sigmoid": "hard_sigmoid", "hard_swish": "hard_silu", "relu6": "relu6",
              "softmax": "softmax", "log_softmax": "log_softmax"}
    if name in direct:
        return direct[name]
    if name == "swish" and float(p["beta"]) == 1.0:
        return "silu"
    if name == "gelu":
        if p["approximate"] in ("tanh", 1, 1.0):
            return keras.layers.Activation(gelu_tanh)
        return "gelu"
    if name == "elu":
        return "elu" if float(p["alpha"]) == 1.0 else keras.layers.ELU(alpha=float(p["alpha"]))
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=float(p["alpha"]))
    if name == "softplus" and float(p["beta"]) == 1.0 and float(p["threshold"]) >= 15.0:
        return "softplus"
    raise ValueError(f"to_keras: {label}: activation {act!r} has no Keras equivalent in nv.interop")


def to_keras(model):
    """The model as a ``keras.Sequential`` (Dense, BatchNormalization,
    Dropout, AlphaDropout, GaussianNoise, PReLU, activations) with its weights
    and running statistics. Raises ValueError naming a layer or activation
    Keras has no built-in for (CReLU, binary step, rrelu, Swish with β ≠ 1,
    Maxout, Residual)."""
    keras = _keras()
    KL = keras.layers
    if not isinstance(model, Sequential) or not model.built:
        raise ValueError("to_keras takes a built nv.Sequential model")
    kls, weights = [keras.Input((model.input_dim,))], []
    for i, layer in enumerate(model.layers):
        label = f"layer {i} ({layer.describe()})"
        t = type(layer)
        if t is L.Dense:
            act = _keras_act(layer.activation, label)
            fused = act if isinstance(act, str) else None
            kls.append(KL.Dense(layer.units, activation=fused, use_bias=layer.use_bias))
            weights.append((len(kls) - 1, [layer.kernel.value] + ([layer.bias.value] if layer.use_bias else [])))
            if not isinstance(act, str):
                kls.append(act)
        elif t is L.Activation:
            act = _keras_act(layer.activation, label)
            kls.append(KL.Activation(act) if isinstance(act, str) else act)
        elif t is L.BatchNorm:
            if layer.momentum is None:
                raise ValueError(f"to_keras: {label}: momentum=None (cumulative average) has no Keras equivalent")
            kls.append(KL.BatchNormalization(momentum=1.0 - layer.momentum, epsilon=layer.eps))
            weights.append((len(kls) - 1, [layer.gamma.value, layer.beta.value, layer.running_mean,
                                           layer.running_var]))
        elif t is L.Dropout:
            kls.append(KL.Dropout(layer.rate))
        elif t is L.AlphaDropout and hasattr(KL, "AlphaDropout"):
            kls.append(KL.AlphaDropout(layer.rate))
        elif t is L.GaussianNoise:
            kls.append(KL.GaussianNoise(layer.stddev))
        elif t is L.PReLU:
            kls.append(KL.PReLU(shared_axes=[1] if layer.shared else None))
            weights.append((len(kls) - 1, [layer.alpha.value.reshape(1 if layer.shared else -1)]))
        else:
            raise ValueError(f"to_keras: {label}: layer class {t.__name__} has no Keras equivalent in nv.interop")
    km = keras.Sequential(kls)
    for index, ws in weights:
        km.layers[index - 1].set_weights([np.array(w, dtype=np.float32) for w in ws])  # Input is not a layer
    return km
