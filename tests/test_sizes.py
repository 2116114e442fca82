"""Checked sizes: every element count that sizes an allocation is computed
with checked arithmetic in C++, and every size a model file declares is
checked against the bytes its member holds and a memory budget before
anything is allocated (docs/reliability.md, "Sizes")."""
import io
import json
import time
import zipfile

import numpy as np
import pytest

import nerve as nv
from nerve import _core


@pytest.mark.parametrize("n", [2 ** 62 + 16, 2 ** 62, 2 ** 63 - 1, -1])
def test_arena_size_overflow_is_a_value_error(n):
    # Before: n * sizeof(float) wrapped around and Arena(2**62 + 16) returned a 64-byte buffer.
    with pytest.raises(ValueError):
        _core.Arena(n)


def test_huge_models_raise_instead_of_overflowing():
    # Each of these segfaulted (heap overflow in AlignedBuffer::fill_with).
    with pytest.raises(ValueError, match="overflows"):
        nv.Sequential([nv.layers.Dense(2 ** 31, use_bias=False)], input_dim=2 ** 31)
    with pytest.raises(ValueError, match="overflows"):
        nv.Sequential([nv.layers.BatchNorm()], input_dim=2 ** 62)
    with pytest.raises(ValueError, match="overflows"):
        nv.Sequential([nv.layers.Dense(2 ** 40)], input_dim=2 ** 40)  # np.prod wrapped this to 0
    with pytest.raises(ValueError, match="overflows"):
        nv.layers.Maxout(2 ** 40, 2 ** 40).build(3)


def test_slice_offsets_near_int64_max_are_refused():
    # offset + size used to wrap negative and pass the range check.
    layer = _core.Dense(2, 3, nv.activations.get("identity")._spec, True)
    arena = _core.Arena(9)
    with pytest.raises(ValueError, match="outside"):
        layer.bind_params(arena, 2 ** 63 - 4, 0)
    with pytest.raises(ValueError, match="outside"):
        arena.values(2 ** 63 - 2, 4)
    with pytest.raises(ValueError, match="outside"):
        arena.grads(4, 2 ** 63 - 2)


def _small_file(tmp_path):
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(4), nv.layers.Dense(2)], input_dim=3)
    m.compile(optimizer="adam", loss="cross_entropy")
    m.train_step(np.ones((2, 3), np.float32), np.array([0, 1]))
    path = tmp_path / "m.nerve"
    m.save(path)
    return path


def _npy_header_only(shape):
    """An .npy header declaring float32 `shape`, with no data after it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_small_file_declaring_half_a_billion_params_fails_fast(tmp_path):
    # The probe's 746-byte file: a Dense 20000 -> 25000 whose params member is
    # only a header. It used to allocate, zero and initialize 3.9 GB (50 s)
    # before failing with EOFError.
    path = _small_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        cfg = json.loads(np.load(io.BytesIO(z.read("config.npy"))).tobytes())
    cfg["model"] = {"input_dim": 20000, "name": None,
                    "layers": [{"class": "Dense", "config": {"units": 25000}}]}
    cfg.pop("compile")
    expected = 20000 * 25000 + 25000
    hostile = tmp_path / "hostile.nerve"
    with zipfile.ZipFile(hostile, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(cfg).encode(), np.uint8))
        z.writestr("config.npy", buf.getvalue())
        z.writestr("params.npy", _npy_header_only((expected,)))
    assert hostile.stat().st_size < 1200
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="memory budget"):  # 12 GB: over the default 8 GiB budget
        nv.load_model(hostile)
    # With a budget that allows it, the member is found to hold no data.
    with pytest.raises(ValueError, match="must hold 500025000 float32 values") as info:
        nv.load_model(hostile, max_bytes=64 << 30)
    assert time.perf_counter() - t0 < 2.0
    assert isinstance(info.value, nv.ModelFileError)


def test_load_budget_is_checked_before_allocating(tmp_path):
    path = _small_file(tmp_path)
    # The real model needs ~(26 params) * 24 bytes + workspaces: far under 1 MB, over 100 bytes.
    assert nv.load_model(path, max_bytes=1 << 20).count_params() == 26
    with pytest.raises(ValueError, match="memory budget"):
        nv.load_model(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes"):
        nv.load_model(path, max_bytes=0)


def test_wide_batchnorm_in_a_file_is_refused_by_the_budget(tmp_path):
    path = _small_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        mem = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(np.load(io.BytesIO(mem["config.npy"])).tobytes())
    cfg["model"] = {"input_dim": 2 ** 40, "name": None, "layers": [{"class": "BatchNorm", "config": {}}]}
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(cfg).encode(), np.uint8))
    mem["config.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for k, v in mem.items():
            z.writestr(k, v)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="memory budget"):
        nv.load_model(path)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("iterations", [2 ** 63 - 1, 2 ** 53 + 1, -1])
def test_absurd_iterations_in_a_file_are_refused(tmp_path, iterations):
    path = _small_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        mem = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(np.load(io.BytesIO(mem["config.npy"])).tobytes())
    cfg["compile"]["optimizer_state"]["iterations"] = iterations
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(cfg).encode(), np.uint8))
    mem["config.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for k, v in mem.items():
            z.writestr(k, v)
    with pytest.raises(ValueError, match="iterations"):
        nv.load_model(path)


def test_optimizer_iterations_at_int64_max_do_not_overflow():
    p = nv.Parameter(np.zeros(3))
    opt = nv.optimizers.Adam([p])
    opt._core.iterations = 2 ** 63 - 1  # the C++ step used to overflow the signed count (UBSan)
    with pytest.raises(ValueError, match="overflow"):
        opt._core.step()
    np.testing.assert_array_equal(p.value, 0.0)
