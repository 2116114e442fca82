"""Model files: data only (no pickle), atomic writes, hostile input rejected."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

import nerve as nv


def trained(tmp_path):
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(6, activation="tanh"), nv.layers.Dense(2)], input_dim=3)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1, momentum=0.9), loss="cross_entropy")
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    m.fit(x, np.arange(20) % 2, epochs=1, batch_size=5, verbose=0)
    path = tmp_path / "m.nerve"
    m.save(path)
    return m, path, x


def rewrite(path, members):
    """Writes a zip with the given {name: bytes} members."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def npy_bytes(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def config_of(path):
    with np.load(path, allow_pickle=False) as f:
        return json.loads(f["config"].tobytes())


def test_roundtrip_keeps_architecture_and_optimizer(tmp_path):
    m, path, x = trained(tmp_path)
    m2 = nv.load_model(path)
    assert [type(l).__name__ for l in m2.layers] == ["Dense", "Dense"]
    assert m2.layers[0].activation.name == "tanh"
    assert isinstance(m2.optimizer, nv.optimizers.SGD)
    np.testing.assert_array_equal(m2.optimizer._core.slot(0), m.optimizer._core.slot(0))
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    m3 = nv.load_model(path, compile=False)
    assert m3.optimizer is None


def test_not_a_model(tmp_path):
    p = tmp_path / "junk.nerve"
    p.write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match="not a nerve model"):
        nv.load_model(p)


def test_pickled_array_is_refused(tmp_path):
    _, path, _ = trained(tmp_path)
    mem = members(path)
    mem["params.npy"] = npy_bytes(np.array([object()], dtype=object), allow_pickle=True)
    rewrite(path, mem)
    with pytest.raises(ValueError):
        nv.load_model(path)


@pytest.mark.parametrize("mutate", [
    lambda c: c["model"]["layers"][0].__setitem__("class", "os.system"),
    lambda c: c["model"]["layers"][0]["config"].__setitem__("units", -5),
    lambda c: c["model"]["layers"][0]["config"].__setitem__("activation", {"name": "nonexistent"}),
    lambda c: c["model"]["layers"][0]["config"].__setitem__("evil", "__import__('os')"),
    lambda c: c.__setitem__("format_version", 99),
    lambda c: c["model"].__setitem__("input_dim", "3; rm -rf /"),
    lambda c: c["compile"]["optimizer"].__setitem__("class", "Popen"),
])
def test_hostile_config_is_rejected(tmp_path, mutate):
    _, path, _ = trained(tmp_path)
    cfg = config_of(path)
    mutate(cfg)
    mem = members(path)
    mem["config.npy"] = npy_bytes(np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8))
    rewrite(path, mem)
    with pytest.raises(ValueError, match="corrupt or incompatible"):
        nv.load_model(path)


def test_wrong_sized_or_nan_weights(tmp_path):
    _, path, _ = trained(tmp_path)
    mem = members(path)
    for bad in (np.zeros(5, np.float32), np.full(3 * 6 + 6 + 6 * 2 + 2, np.nan, np.float32)):
        mem["params.npy"] = npy_bytes(bad)
        rewrite(path, mem)
        with pytest.raises(ValueError, match="params"):
            nv.load_model(path)


def test_truncated_file(tmp_path):
    _, path, _ = trained(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        nv.load_model(path)


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    m, path, x = trained(tmp_path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        m.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.nerve"]
