"""Build information and the import-time CPU check."""
import nerve as nv
from nerve import _cpucheck


def test_build_info_fields():
    info = nv.build_info()
    for key in ("version", "compiler", "simd", "openmp", "threads", "eigen", "simd_build"):
        assert key in info
    assert info["version"] == nv.__version__
    assert info["threads"] == nv.get_num_threads()
    if info["simd_build"] == "avx2":
        # The kernels and Eigen's GEMM were compiled for AVX2 + FMA.
        assert info["simd"] == "avx2+fma"
        assert "avx2" in info["eigen_simd"] and "fma" in info["eigen_simd"]


def test_cpu_check_names_required_features():
    required = _cpucheck.required_features()
    if _cpucheck.simd_build == "avx2":
        assert set(required) == {"avx", "avx2", "fma"}
    # nerve imported, so this CPU has them all.
    assert _cpucheck.missing_features() == []


def test_set_num_threads_round_trip():
    old = nv.get_num_threads()
    try:
        nv.set_num_threads(1)
        assert nv.get_num_threads() == 1 and nv.build_info()["threads"] == 1
    finally:
        nv.set_num_threads(old)
