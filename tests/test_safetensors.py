"""safetensors: nerve's own reader/writer against the safetensors package
(and torch, when installed), model.save_weights / load_weights, and hostile
files rejected before anything is allocated."""
import json
import struct

import numpy as np
import pytest
import safetensors.numpy as st_np

import nerve as nv
from nerve import safetensors as nst
from conftest import layer_kind_models, rng


def blob(header, data=b"", pad=True):
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_round_trip_against_the_reference(tmp_path):
    r = rng(0)
    tensors = {"a": r.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
               "c": r.standard_normal(7).astype(np.float16), "d": np.array(2.5), "e": np.zeros((0, 3), np.float32),
               "f": np.array([True, False]), "g": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    ours = tmp_path / "ours.safetensors"
    nst.save_file(tensors, ours, metadata={"k": "v"})
    theirs = st_np.load_file(str(ours))  # the reference reads our file
    assert set(theirs) == set(tensors)
    for k, v in tensors.items():
        assert theirs[k].dtype == v.dtype and theirs[k].shape == v.shape
        np.testing.assert_array_equal(theirs[k], v)
    ref = tmp_path / "ref.safetensors"
    st_np.save_file(tensors, str(ref), metadata={"k": "v"})
    back, meta = nst.load_file(ref, with_metadata=True)  # we read the reference's file
    assert meta == {"k": "v"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)
    raw = ours.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0  # the header is padded: the data section starts 8-aligned
    for name, info in json.loads(raw[8:8 + n]).items():
        if name != "__metadata__":  # each tensor starts at a multiple of its item size
            assert info["data_offsets"][0] % tensors[name].dtype.itemsize == 0


def test_torch_reads_and_writes_the_files(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    model = layer_kind_models()[3][1]
    path = tmp_path / "w.safetensors"
    model.save_weights(path)
    tensors = st_torch.load_file(str(path))
    np.testing.assert_array_equal(tensors["layers.0.kernel"].numpy(), model.layers[0].kernel.value)
    bf = {"x": torch.tensor([1.5, -2.25, 3e38], dtype=torch.bfloat16)}
    st_torch.save_file(bf, str(tmp_path / "bf.safetensors"))
    got = nst.load_file(tmp_path / "bf.safetensors")["x"]
    np.testing.assert_array_equal(got, bf["x"].float().numpy())


@pytest.mark.parametrize("label,model", layer_kind_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_model_weights_round_trip(label, model, tmp_path):
    path = tmp_path / "w.safetensors"
    model.save_weights(path)
    names = sorted(st_np.load_file(str(path)))
    assert all(n.startswith("layers.") for n in names)
    twin = nv.Sequential([l.copy() for l in model.layers], input_dim=6)  # copy() carries weights...
    for p in twin.parameters():
        p.value = np.zeros(p.shape, np.float32)  # ...which we wipe
    for b in twin.buffers():
        b[...] = 0
    twin.load_weights(path)
    x = rng(1).standard_normal((8, 6)).astype(np.float32)
    np.testing.assert_array_equal(twin.predict(x), model.predict(x))
    for a, b in zip(twin.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_stable_names():
    L = nv.layers
    model = nv.Sequential([L.Dense(3, activation="relu"), L.BatchNorm(), L.Dropout(0.1),
                           L.Residual([L.Dense(3), L.PReLU()]), L.Swish(), L.Dense(2, use_bias=False)], input_dim=2)
    names = [n for n, _ in nst.model_tensors(model)]
    assert names == ["layers.0.kernel", "layers.0.bias", "layers.1.gamma", "layers.1.beta",
                     "layers.1.running_mean", "layers.1.running_var", "layers.1.num_batches_tracked",
                     "layers.3.layers.0.kernel", "layers.3.layers.0.bias", "layers.3.layers.1.alpha",
                     "layers.4.beta", "layers.5.kernel"]


def test_load_weights_checks_everything_first(tmp_path):
    model = nv.Sequential([nv.layers.Dense(3), nv.layers.Dense(2)], input_dim=4)
    good = {n: np.array(v) for n, v in nst.model_tensors(model)}
    before = model.get_weights()
    cases = [({**good, "layers.1.kernel": np.zeros((3, 3), np.float32)}, r"shape \(3, 3\).*\(3, 2\)"),
             ({k: v for k, v in good.items() if k != "layers.0.bias"}, r"missing \['layers.0.bias'\]"),
             ({**good, "extra": np.zeros(1, np.float32)}, r"unexpected \['extra'\]"),
             ({**good, "layers.1.bias": np.array([np.nan, 0], np.float32)}, "NaN"),
             ({**good, "layers.0.kernel": np.ones((4, 3), np.float32)} | {"layers.1.bias": np.ones(5, np.float32)},
              "shape")]
    for i, (tensors, msg) in enumerate(cases):
        path = tmp_path / f"bad{i}.safetensors"
        nst.save_file(tensors, path)
        with pytest.raises(ValueError, match=msg):
            model.load_weights(path)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)  # the first tensor was fine, yet nothing was written


def test_pruned_weights_stay_pruned(tmp_path):
    nv.manual_seed(0)
    model = nv.Sequential([nv.layers.Dense(20, activation="relu"), nv.layers.Dense(3)], input_dim=8)
    nv.pruning.prune_magnitude(model, 0.8)
    dense = nv.Sequential([nv.layers.Dense(20, activation="relu"), nv.layers.Dense(3)], input_dim=8)
    dense.save_weights(tmp_path / "dense.safetensors")
    model.load_weights(tmp_path / "dense.safetensors")  # loads nonzero values into pruned slots...
    assert nv.pruning.sparsity(model)["overall"] >= 0.8  # ...which the mask zeroes again


HOSTILE = [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 1 << 62) + b"{}", "header length"),
    (struct.pack("<Q", 64) + b"{}", "header length"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "UTF-8 JSON"),
    (blob([1, 2]), "JSON object"),
    (blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "outside"),
    (blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8), "needs 8 bytes"),
    (blob({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}, b"\0" * 8), "needs"),
    (blob({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "non-negative"),
    (blob({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (blob({"a": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2), "unknown dtype"),
    (blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "outside"),
    (blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8), r"\[begin, end\]"),
    (blob({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "exactly the keys"),
    (blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlap"),
    (blob({"__metadata__": {"k": 1}}), "__metadata__"),
    (blob({"a": "x"}), "exactly the keys"),
]


@pytest.mark.parametrize("data,msg", HOSTILE)
def test_hostile_files_raise_value_error(data, msg, tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=msg):
        nst.load_file(path)
    with pytest.raises(ValueError, match=msg):
        nst.loads(data)


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        nst.save_file({"a": np.array(["x"])}, tmp_path / "a")
    with pytest.raises(ValueError, match="names"):
        nst.save_file({"__metadata__": np.zeros(1)}, tmp_path / "a")
    with pytest.raises(ValueError, match="metadata"):
        nst.save_file({"a": np.zeros(1)}, tmp_path / "a", metadata={"k": 2})
    with pytest.raises(RuntimeError, match="build"):
        nv.Sequential([nv.layers.Dense(2)]).save_weights(tmp_path / "a")
