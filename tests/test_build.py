"""Build information, the CPU levels and the import-time level choice."""
import os
import subprocess
import sys

import pytest

import nerve as nv
from nerve import _cpucheck, _loader

# What each level's module reports as the SIMD its kernels were compiled for.
SIMD_OF_LEVEL = {"avx2": "avx2+fma", "avx512": "avx512f"}


def test_build_info_fields():
    info = nv.build_info()
    for key in ("version", "compiler", "simd", "openmp", "threads", "eigen", "cpu_level", "cpu_levels"):
        assert key in info
    assert info["version"] == nv.__version__
    assert info["threads"] == nv.get_num_threads()
    assert info["cpu_level"] in info["cpu_levels"]
    if info["cpu_level"] in SIMD_OF_LEVEL:
        assert info["simd"] == SIMD_OF_LEVEL[info["cpu_level"]]
    if info["cpu_level"] == "avx512":
        assert "avx512" in info["eigen_simd"]
    if info["cpu_level"] == "avx2":
        # The kernels and Eigen's GEMM were compiled for AVX2 + FMA, no AVX-512.
        assert "avx2" in info["eigen_simd"] and "fma" in info["eigen_simd"]
        assert "avx512" not in info["eigen_simd"]


def test_cpu_levels_best_last_and_chosen_by_default():
    levels = nv.build_info()["cpu_levels"]
    order = list(_cpucheck.all_levels)
    assert order == ["generic", "avx2", "avx512"]
    assert levels == sorted(levels, key=order.index)
    assert "generic" in levels  # every install has it, and every CPU runs it
    for lvl in levels:
        assert _cpucheck.missing_features(lvl) == []
    if not os.environ.get("NERVE_CPU"):
        assert nv.build_info()["cpu_level"] == levels[-1]


def test_level_features():
    assert _cpucheck.level_features("generic") == []
    assert set(_cpucheck.level_features("avx2")) == {"avx", "avx2", "fma"}
    assert set(_cpucheck.level_features("avx512")) >= {"avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"}


def test_nerve_cpu_unknown_name_suggests():
    with pytest.raises(ImportError, match="did you mean 'avx512'"):
        _loader.choose("avx51")
    with pytest.raises(ImportError, match="not a CPU level"):
        _loader.choose("sse9")


def test_nerve_cpu_level_the_cpu_lacks_names_the_feature(monkeypatch):
    # A CPU without AVX-512 BW (as seen by the loader): asking for avx512 must
    # name the missing feature, and the default falls back to the next level.
    real = _cpucheck.missing_features
    monkeypatch.setattr(_cpucheck, "missing_features",
                        lambda lvl: ["avx512bw"] if lvl == "avx512" else real(lvl))
    with pytest.raises(ImportError, match="lacks avx512bw"):
        _loader.choose("avx512")
    assert _loader.choose("") != "avx512"


def test_nerve_cpu_picks_each_level_in_a_fresh_process():
    code = "import nerve as nv; i = nv.build_info(); print(i['cpu_level'], i['simd'])"
    for lvl in nv.build_info()["cpu_levels"]:
        env = dict(os.environ, NERVE_CPU=lvl)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        level, simd = out.stdout.split()
        assert level == lvl
        if lvl in SIMD_OF_LEVEL:
            assert simd == SIMD_OF_LEVEL[lvl]
    env = dict(os.environ, NERVE_CPU="avx3")
    bad = subprocess.run([sys.executable, "-c", "import nerve"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "ImportError" in bad.stderr and "did you mean" in bad.stderr


def test_set_num_threads_round_trip():
    old = nv.get_num_threads()
    try:
        nv.set_num_threads(1)
        assert nv.get_num_threads() == 1 and nv.build_info()["threads"] == 1
    finally:
        nv.set_num_threads(old)
