"""ONNX export: ``nv.onnx.export(model, "model.onnx")`` (extra ``onnx``).

The exported graph computes ``model.predict``: inference form, float32, one
input ``"input"`` of shape ``(batch, input_dim)`` with a dynamic batch axis
and one output ``"output"``. It passes ``onnx.checker`` (full check) and runs
in onnxruntime; the tests compare every layer kind and activation against
``model.predict`` (within 1e-5 of the output's scale).

Mapping (ONNX opset 17 by default):

=====================  ====================================================
nerve                  ONNX
=====================  ====================================================
Dense                  Gemm(x, W, b) (W stored as (in, out), transB=0);
                       MatMul without bias; then the activation
Maxout(units, pieces)  Gemm → Reshape(0, units, pieces) → ReduceMax(axis 2)
BatchNorm              BatchNormalization (inference: running statistics)
Dropout, AlphaDropout, nothing (identity at inference)
GaussianNoise
Residual([f...])       Add(x, f(x))
PReLU                  PRelu (slope of shape (1,) or (features,))
CosineDense            Div(x, Max(ReduceL2(x, axis 1), 1e-12)) → MatMul(V),
                       V the kernel with its columns normalised the same way
LargeMarginDense       MatMul(W) (the plain logits; the margin is training only)
SphereDense            MatMul(V) (‖x‖ cos θ), V as for CosineDense
Swish layer            x · Sigmoid(β x), β the learned value
activations            see :data:`ACTIVATIONS` (Relu, LeakyRelu, Elu, Selu,
                       Sigmoid, Tanh, Softmax, LogSoftmax, HardSigmoid,
                       HardSwish, Clip, Softplus; GELU from Erf or Tanh;
                       Mish = x·tanh(softplus x); CReLU = Concat(Relu(x),
                       Relu(−x)); binary step = Cast(x ≥ 0); rrelu = its
                       inference slope (lower+upper)/2)
=====================  ====================================================

``export(..., softmax=True)`` appends a Softmax over the outputs (a
classifier trained on logits with cross-entropy then exports
probabilities). A layer or activation with no mapping raises
:class:`ExportError` naming it.
"""
import os

import numpy as np

DEFAULT_OPSET = 17


class ExportError(ValueError):
    """A layer or activation that has no ONNX mapping (the message names it)."""


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nv.onnx needs the onnx package: pip install 'nerve[onnx]'") from e
    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0

    def _name(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem, array, dtype=np.float32):
        name = self._name(stem)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def scalar(self, value):
        return self.const("c", np.array(value, dtype=np.float32))

    def op(self, op_type, inputs, stem=None, **attrs):
        out = self._name(stem or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _act_params(act):
    """The activation's parameters with its registry defaults filled in."""
    from . import activations
    row = next(r for r in activations.names() if r["name"] == act.name)
    params = dict(row["params"])
    params.update(act.params)
    return params


def _gelu_tanh(g, x):
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    x3 = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [x3, g.scalar(0.044715)])]),
                         g.scalar(0.7978845608028654)])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [g.op("Tanh", [inner]), g.scalar(1.0)])])


def _gelu_erf(g, x):
    # 0.5 x (1 + erf(x / sqrt 2))
    e = g.op("Erf", [g.op("Mul", [x, g.scalar(0.7071067811865476)])])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [e, g.scalar(1.0)])])


def _softplus(g, x, beta, threshold):
    # torch.nn.functional.softplus: log(1 + exp(beta x)) / beta, x where beta x > threshold
    bx = x if beta == 1.0 else g.op("Mul", [x, g.scalar(beta)])
    sp = g.op("Softplus", [bx])
    if beta != 1.0:
        sp = g.op("Div", [sp, g.scalar(beta)])
    return g.op("Where", [g.op("Greater", [bx, g.scalar(threshold)]), x, sp])


def _swish(g, x, beta):
    bx = x if beta == 1.0 else g.op("Mul", [x, g.scalar(beta)])
    return g.op("Mul", [x, g.op("Sigmoid", [bx])])


def _selu(g, x, p):
    return g.op("Selu", [x], alpha=1.6732632423543772, gamma=1.0507009873554805)


def _binary_step(g, x, p):
    from onnx import TensorProto
    return g.op("Cast", [g.op("GreaterOrEqual", [x, g.scalar(0.0)])], to=TensorProto.FLOAT)


# name -> emitter(graph, x, params) -> output name. One entry per nerve
# activation that ONNX can express (all of them today).
ACTIVATIONS = {
    "identity": lambda g, x, p: x,
    "sigmoid": lambda g, x, p: g.op("Sigmoid", [x]),
    "tanh": lambda g, x, p: g.op("Tanh", [x]),
    "relu": lambda g, x, p: g.op("Relu", [x]),
    "leaky_relu": lambda g, x, p: g.op("LeakyRelu", [x], alpha=float(p["alpha"])),
    "elu": lambda g, x, p: g.op("Elu", [x], alpha=float(p["alpha"])),
    "selu": _selu,
    "crelu": lambda g, x, p: g.op("Concat", [g.op("Relu", [x]), g.op("Relu", [g.op("Neg", [x])])], axis=1),
    "swish": lambda g, x, p: _swish(g, x, float(p["beta"])),
    "binary_step": _binary_step,
    "softmax": lambda g, x, p: g.op("Softmax", [x], axis=1),
    "log_softmax": lambda g, x, p: g.op("LogSoftmax", [x], axis=1),
    "gelu": lambda g, x, p: (_gelu_tanh(g, x) if p["approximate"] in ("tanh", 1, 1.0, True)
                             else _gelu_erf(g, x)),
    "softplus": lambda g, x, p: _softplus(g, x, float(p["beta"]), float(p["threshold"])),
    "mish": lambda g, x, p: g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])]),
    "hard_sigmoid": lambda g, x, p: g.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5),
    "hard_swish": lambda g, x, p: g.op("HardSwish", [x]),
    "relu6": lambda g, x, p: g.op("Clip", [x, g.scalar(0.0), g.scalar(6.0)]),
    # Inference form: the fixed slope (lower + upper) / 2, as torch.nn.RReLU in eval.
    "rrelu": lambda g, x, p: g.op("LeakyRelu", [x], alpha=(float(p["lower"]) + float(p["upper"])) / 2.0),
}


def _activation(g, x, act, where):
    emit = ACTIVATIONS.get(act.name)
    if emit is None:
        raise ExportError(f"{where}: activation {act.name!r} has no ONNX mapping in nv.onnx "
                          f"(mapped: {', '.join(sorted(ACTIVATIONS))})")
    return emit(g, x, _act_params(act))


def _affine(g, x, kernel, bias, stem):
    w = g.const(f"{stem}_kernel", kernel)
    if bias is None:
        return g.op("MatMul", [x, w])
    return g.op("Gemm", [x, w, g.const(f"{stem}_bias", bias)])


def _layers(g, x, layers, prefix):
    from . import layers as L
    for i, layer in enumerate(layers):
        where = f"layer {prefix}{i} ({layer.describe()})"
        stem = f"l{prefix}{i}".replace("/", "_")
        if type(layer) is L.Maxout:
            z = _affine(g, x, layer.kernel.value, layer.bias.value if layer.use_bias else None, stem)
            shape = g.const(f"{stem}_shape", np.array([0, layer.units, layer.pieces]), np.int64)
            x = g.op("ReduceMax", [g.op("Reshape", [z, shape])], axes=[2], keepdims=0)
        elif type(layer) is L.Dense:
            x = _affine(g, x, layer.kernel.value, layer.bias.value if layer.use_bias else None, stem)
            x = _activation(g, x, layer.activation, where)
        elif type(layer) is L.Activation:
            x = _activation(g, x, layer.activation, where)
        elif type(layer) is L.BatchNorm:
            mean, var = layer.running_mean, layer.running_var
            x = g.op("BatchNormalization", [x, g.const(f"{stem}_gamma", layer.gamma.value),
                                            g.const(f"{stem}_beta", layer.beta.value),
                                            g.const(f"{stem}_mean", mean), g.const(f"{stem}_var", var)],
                     epsilon=float(layer.eps))
        elif type(layer) in (L.Dropout, L.AlphaDropout, L.GaussianNoise):
            continue  # identity at inference
        elif type(layer) is L.Residual:
            x = g.op("Add", [x, _layers(g, x, layer.layers, f"{prefix}{i}/")])
        elif type(layer) is L.PReLU:
            x = g.op("PRelu", [x, g.const(f"{stem}_alpha", layer.alpha.value)])
        elif type(layer) in (L.CosineDense, L.LargeMarginDense, L.SphereDense):
            w = layer.kernel.value.astype(np.float64)
            if type(layer) is not L.LargeMarginDense:
                w = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
            if type(layer) is L.CosineDense:
                norm = g.op("ReduceL2", [x], axes=[1], keepdims=1)
                x = g.op("Div", [x, g.op("Max", [norm, g.const(f"{stem}_eps", np.array([1e-12]))])])
            x = g.op("MatMul", [x, g.const(f"{stem}_kernel", w.astype(np.float32))])
        elif type(layer) is L.Swish:
            beta = float(layer.beta.value[0]) if layer.learnable else float(layer.beta_init)
            x = _swish(g, x, beta)
        else:
            raise ExportError(f"{where}: layer class {type(layer).__name__} has no ONNX mapping in "
                              f"nv.onnx (mapped: Dense, Maxout, Activation, BatchNorm, Dropout, "
                              f"AlphaDropout, GaussianNoise, Residual, PReLU, Swish, CosineDense, "
                              f"LargeMarginDense, SphereDense)")
    return x


def to_onnx(model, softmax=False, opset=DEFAULT_OPSET, name=None):
    """The model as an ``onnx.ModelProto`` (checked with ``onnx.checker``)."""
    from .model import Sequential
    onnx, TensorProto, helper, numpy_helper = _onnx()
    if not isinstance(model, Sequential):
        raise ValueError(f"nv.onnx.export takes an nv.Sequential model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("build or train the model before exporting it (its input width must be known)")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14 (HardSwish needs 14), got {opset!r}")
    g = _Graph(helper, numpy_helper)
    # ReduceMax takes its axes as an input from opset 18 on.
    g.reduce_axes_input = opset >= 18
    out = _layers(g, "input", model.layers, "")
    if softmax:
        out = g.op("Softmax", [out], axis=1)
    if out == "input":  # a model of identity layers only: ONNX outputs need a producing node
        out = g.op("Identity", [out])
    if g.reduce_axes_input:
        _axes_as_inputs(g, numpy_helper, helper)
    # The last node made `out` and nothing reads it yet: it becomes the graph output.
    assert g.nodes[-1].output[0] == out
    g.nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        g.nodes, name or model.name or "nerve_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", model.input_dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", model.output_dim])],
        g.inits)
    from ._version import __version__
    proto = helper.make_model(graph, producer_name="nerve", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", opset)])
    # The IR version this onnx package writes may be newer than an older
    # onnxruntime reads; the lowest IR version that carries the opset is what
    # every runtime of that opset accepts.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _axes_as_inputs(g, numpy_helper, helper):
    """Opset >= 18: ReduceMax's (and ReduceL2's) axes attribute becomes its second input."""
    for node in g.nodes:
        if node.op_type not in ("ReduceMax", "ReduceL2"):
            continue
        axes = [a for a in node.attribute if a.name == "axes"]
        if axes:
            values = list(axes[0].ints)
            node.attribute.remove(axes[0])
            node.input.append(g.const("axes", np.array(values), np.int64))


def export(model, path, softmax=False, opset=DEFAULT_OPSET):
    """Writes the model as ONNX to `path` (a file name or a binary file
    object) and returns the ``onnx.ModelProto``.

    softmax: append a Softmax over the output columns (probabilities from a
    model that outputs logits). opset: the ONNX opset (default 17; >= 14).
    Raises :class:`ExportError` (a ValueError) naming any layer or activation
    that has no mapping.
    """
    proto = to_onnx(model, softmax=softmax, opset=opset)
    data = proto.SerializeToString()
    if hasattr(path, "write"):
        path.write(data)
    else:
        with open(os.fspath(path), "wb") as f:
            f.write(data)
    return proto
