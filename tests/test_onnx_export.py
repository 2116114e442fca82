"""nv.onnx.export: onnx.checker clean, dynamic batch, onnxruntime agrees with
model.predict for every layer kind and every activation; unmapped layers
raise an error naming them."""
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import nerve as nv
from conftest import activation_cases, close_to_scale, layer_kind_models, rng

# The activations nerve has today; each must export (a new one may also
# raise ExportError naming itself until it is mapped: test_every_activation).
KNOWN = {"identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "crelu", "swish",
         "binary_step", "softmax", "log_softmax", "gelu", "softplus", "mish", "hard_sigmoid",
         "hard_swish", "relu6", "rrelu"}


def run_ort(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def checked(proto):
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.mark.parametrize("label,model", layer_kind_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_layer_kind_matches_predict(label, model, tmp_path):
    path = tmp_path / f"{label}.onnx"
    nv.onnx.export(model, path)
    proto = checked(onnx.load(path))
    for batch in (1, 5, 37):  # the batch axis is dynamic
        x = rng(batch).standard_normal((batch, 6)).astype(np.float32)
        close_to_scale(run_ort(proto, x), model.predict(x))


@pytest.mark.parametrize("label,name,params", activation_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_activation(label, name, params):
    L = nv.layers
    nv.manual_seed(3)
    # Pre-activations spread over about [-8, 8] reach every branch (thresholds, saturation).
    fused = nv.Sequential([L.Dense(8, activation=nv.activations.get(name, **params))], input_dim=4)
    fused.layers[0].kernel.value = rng(1).uniform(-2, 2, (4, 8)).astype(np.float32)
    fused.layers[0].bias.value = rng(2).uniform(-1, 1, 8).astype(np.float32)
    alone = nv.Sequential([L.Dense(8), L.Activation(name, **params)], input_dim=4)
    alone.layers[0].kernel.value = fused.layers[0].kernel.value
    alone.layers[0].bias.value = fused.layers[0].bias.value
    x = rng(4).uniform(-2, 2, (50, 4)).astype(np.float32)
    for model in (fused, alone):
        try:
            proto = checked(nv.onnx.to_onnx(model))
        except nv.onnx.ExportError as e:
            assert name not in KNOWN, f"{name} must export: {e}"
            assert repr(name) in str(e)  # the error names the activation
            return
        got = run_ort(proto, x)
        want = model.predict(x)
        if name == "binary_step":
            np.testing.assert_array_equal(got, want)
        else:
            close_to_scale(got, want)


def test_known_activations_are_registered():
    # If an activation is renamed, KNOWN must follow (the test above relies on it).
    assert KNOWN <= {r["name"] for r in nv.activations.names()}


def test_softmax_option_and_graph_shape():
    nv.manual_seed(0)
    model = nv.Sequential([nv.layers.Dense(5, activation="relu"), nv.layers.Dense(4)], input_dim=3)
    proto = nv.onnx.to_onnx(model, softmax=True)
    x = rng(0).standard_normal((9, 3)).astype(np.float32)
    logits = model.predict(x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    close_to_scale(run_ort(proto, x), probs)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 4]
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Gemm", "Relu", "Gemm", "Softmax"]  # Dense is one Gemm, no transposes


def test_dense_without_bias_is_matmul_and_dropout_vanishes():
    model = nv.Sequential([nv.layers.Dense(4, use_bias=False), nv.layers.Dropout(0.5),
                           nv.layers.GaussianNoise(1.0), nv.layers.Residual([nv.layers.Dense(4)])], input_dim=2)
    ops = [n.op_type for n in nv.onnx.to_onnx(model).graph.node]
    assert ops == ["MatMul", "Gemm", "Add"]


def test_opsets_and_file_objects():
    model = layer_kind_models()[2][1]  # maxout: ReduceMax's axes change form at opset 18
    x = rng(9).standard_normal((6, 6)).astype(np.float32)
    for opset in (14, 17, 18, 20):
        proto = checked(nv.onnx.to_onnx(model, opset=opset))
        assert proto.opset_import[0].version == opset
        close_to_scale(run_ort(proto, x), model.predict(x))
    buf = io.BytesIO()
    nv.onnx.export(model, buf)
    close_to_scale(run_ort(onnx.load_from_string(buf.getvalue()), x), model.predict(x))
    with pytest.raises(ValueError, match="opset"):
        nv.onnx.to_onnx(model, opset=9)


def test_unmapped_layer_raises_naming_it():
    class Doubler(nv.layers.Layer):  # a user layer nv.onnx knows nothing about
        def _make_core(self, input_dim):
            return nv._core.ActivationLayer(input_dim, nv.activations.get("identity")._spec)

    model = nv.Sequential([nv.layers.Dense(3), Doubler(name="mine")], input_dim=2)
    with pytest.raises(nv.onnx.ExportError, match=r"layer 1 \(mine\).*Doubler"):
        nv.onnx.to_onnx(model)
    with pytest.raises(ValueError, match="build"):
        nv.onnx.to_onnx(nv.Sequential([nv.layers.Dense(3)]))
