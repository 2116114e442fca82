// Arenas, threads, build information and the counter-based random fills.
#include <Eigen/Core>
#include <cmath>

#include "common.hpp"
#include "nerve/gemm.hpp"
#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"
#include "nerve/rng.hpp"

namespace nerve::bind {

namespace {

std::string simd_level() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE4_2__)
  return "sse4.2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "generic";
#endif
}

// A zero-copy numpy view of part of a buffer; `owner` keeps the memory alive.
py::array view(float* data, Index offset, Index size, py::handle owner) {
  return py::array_t<float>({static_cast<py::ssize_t>(size)}, {static_cast<py::ssize_t>(sizeof(float))},
                            data + offset, owner);
}

// A float32 matrix whose rows may lie apart (a column slice of a wider array)
// but whose columns are contiguous: gemm's operand layout. Returns its row stride.
Index strided_matrix(const py::array& a, const char* what) {
  if (!py::isinstance<py::array_t<float>>(a) || a.dtype().kind() != 'f' || a.itemsize() != 4 ||
      a.ndim() != 2)
    throw ValueError(std::string(what) + " must be a 2-D float32 array");
  const Index rows = a.shape(0), cols = a.shape(1);
  const py::ssize_t row_stride = a.strides(0), col_stride = a.strides(1);
  require(rows == 0 || cols <= 1 || col_stride == 4, std::string(what) + " must have contiguous rows");
  if (rows <= 1 || cols == 0) return std::max<Index>(cols, 1);  // the row stride is never used
  require(row_stride > 0 && row_stride % 4 == 0 && row_stride / 4 >= cols,
          std::string(what) + " must have rows in order, at least a row apart");
  return row_stride / 4;
}

void check_range(const ParamArena& a, Index offset, Index size) {
  check_slice(a.size(), offset, size, "arena slice");
}

// Fills out[i] for i in [0, n) from element counters, in parallel chunks: each
// element depends only on (seed, stream, i), so any thread count gives the
// same array.
template <class F>
void fill(float* out, Index n, F&& draw) {
  parallel_for(n, threads_for(64.0 * n, (n + 4095) / 4096),
               [&](Index i) { out[i] = draw(static_cast<std::uint64_t>(i)); });
}

}  // namespace

void bind_core(py::module_& m) {
  py::class_<ParamArena, std::shared_ptr<ParamArena>>(m, "Arena",
                                                      "Parameter values and gradients, 64-byte aligned")
      .def(py::init([](Index n) {
             require(n >= 0, "arena size must be >= 0");
             return std::make_shared<ParamArena>(n);
           }),
           py::arg("size"))
      .def_property_readonly("size", &ParamArena::size)
      .def(
          "values",
          [](py::object self, Index offset, Index size) {
            auto& a = self.cast<ParamArena&>();
            check_range(a, offset, size);
            return view(a.values.data(), offset, size, self);
          },
          py::arg("offset"), py::arg("size"))
      .def(
          "grads",
          [](py::object self, Index offset, Index size) {
            auto& a = self.cast<ParamArena&>();
            check_range(a, offset, size);
            return view(a.grads.data(), offset, size, self);
          },
          py::arg("offset"), py::arg("size"))
      .def_property_readonly("has_mask", &ParamArena::has_mask)
      .def("enable_mask", &ParamArena::enable_mask, "Allocates the pruning mask (all ones)")
      .def("clear_mask", [](ParamArena& a) { a.mask.resize(0); })
      .def("apply_mask", &ParamArena::apply_mask, "Zeroes every value whose mask is 0")
      .def(
          "mask",
          [](py::object self, Index offset, Index size) {
            auto& a = self.cast<ParamArena&>();
            require(a.has_mask(), "this arena has no pruning mask (enable_mask first)");
            check_range(a, offset, size);
            return view(a.mask.data(), offset, size, self);
          },
          py::arg("offset"), py::arg("size"))
      .def_property_readonly("address", [](const ParamArena& a) {
        return reinterpret_cast<std::uintptr_t>(a.values.data());
      });

  m.def(
      "gemm",
      [](py::array a, py::array b, py::array c, bool trans_a, bool trans_b, bool accumulate, bool prepacked) {
        const Index lda = strided_matrix(a, "a"), ldb = strided_matrix(b, "b"),
                    ldc = strided_matrix(c, "c");
        require(c.writeable(), "c must be writeable");
        const Index M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
        const Index N = trans_b ? b.shape(0) : b.shape(1);
        require((trans_b ? b.shape(1) : b.shape(0)) == K && c.shape(0) == M && c.shape(1) == N,
                "gemm shapes do not match: op(a) " + std::to_string(M) + " x " + std::to_string(K) +
                    ", b " + shape_str(b) + ", c " + shape_str(c));
        const float* pa = fptr(a);
        const float* pb = fptr(b);
        float* pc = fmut(c);
        require(!prepacked || !trans_a, "gemm: prepacked needs trans_a=False");
        py::gil_scoped_release nogil;
        if (prepacked) {
          PackedB packed;
          packed.pack(trans_b, K, N, pb, ldb);
          gemm_prepacked(trans_b, M, N, K, pa, lda, pb, ldb, packed, pc, ldc, accumulate);
        } else {
          gemm(trans_a, trans_b, M, N, K, pa, lda, pb, ldb, pc, ldc, accumulate);
        }
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a"), py::arg("trans_b"),
      py::arg("accumulate"), py::arg("prepacked") = false,
      "c (+)= op(a) @ op(b) with the training GEMM (op = transpose when trans_*); "
      "rows may be strided, columns contiguous. prepacked: op(b) packed once first and the "
      "product run from that packing (PackedB + gemm_prepacked, as the recurrent layers' steps). "
      "For tests and benchmarks.");

  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("set_adaptive_threads", &set_adaptive_threads, py::arg("on"));
  m.def("adaptive_threads", &adaptive_threads);
  m.def("thread_guard_stats", [] {
    const detail::ThreadGuard& g = detail::thread_guard;
    py::dict d;
    d["enabled"] = g.enabled.load();
    d["team_regions"] = g.team_regions.load();
    d["solo_regions"] = g.solo_regions.load();
    d["stalls"] = g.stalls.load();
    d["slow_windows"] = g.slow_windows.load();
    d["preempted_windows"] = g.preempted_windows.load();
    const std::int64_t until = g.solo_until_ns.load();
    d["solo_now"] = until != 0 && detail::now_ns() < until;
    d["backoff_ms"] = static_cast<double>(g.backoff_ns.load()) / 1e6;
    return d;
  }, "Counters of the oversubscription guard (parallel.hpp): regions run by the team, regions run "
     "alone after a stall, stalls seen, whether regions run alone now, the current back-off.");
  m.def("_set_worker_delay_ns", [](std::int64_t ns) { detail::thread_guard.worker_delay_ns.store(ns); },
        py::arg("ns"), "Test hook: worker threads sleep this long as each parallel region starts.");
  m.def("_reset_thread_guard", [] {
    detail::reset_thread_guard();
  }, "Test hook: forget the guard's state and counters.");
  m.def("_set_fake_run_delay_ns", [](std::int64_t ns) { detail::thread_guard.fake_run_delay_ns.store(ns); },
        py::arg("ns"), "Test hook: the run delay every thread reads (ns); -1: the kernel's again.");
  m.def("_run_delay_ns", &detail::run_delay_ns,
        "The calling thread's time runnable but waiting for a CPU (ns; Linux schedstat), -1 where unknown.");
  m.def("_guard_note_region", [](std::int64_t work_ns, std::int64_t wait_ns, int threads) {
    if (work_ns < 0 || wait_ns < 0 || threads < 2) throw std::invalid_argument("_guard_note_region: bad timing");
    detail::guard_note_region(work_ns, wait_ns, threads);
  }, py::arg("work_ns"), py::arg("wait_ns"), py::arg("threads"),
     "Test hook: report a team region with these timings to the guard, as parallel_for does.");
  m.def("set_flush_denormal", &set_flush_denormal, py::arg("on"));
  m.def("flush_denormal", &flush_denormal);
  m.def("alloc_count", [] { return AllocStats::allocations; },
        "Aligned buffer allocations so far (a training step after the first must add none)");

  m.def("build_info", [] {
    py::dict d;
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = "unknown";
#endif
    d["simd"] = simd_level();
    d["openmp"] = have_openmp();
    d["eigen"] = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                 "." + std::to_string(EIGEN_MINOR_VERSION);
    // Eigen's own SimdInstructionSetsInUse() reports "AVX" for AVX2 builds;
    // its feature macros tell what its kernels really use.
    std::string eigen_simd;
#if defined(EIGEN_VECTORIZE_AVX512)
    eigen_simd += "avx512 ";
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
    eigen_simd += "avx2 ";
#endif
#if defined(EIGEN_VECTORIZE_FMA)
    eigen_simd += "fma ";
#endif
#if defined(EIGEN_VECTORIZE_AVX)
    eigen_simd += "avx ";
#endif
#if defined(EIGEN_VECTORIZE_SSE4_2)
    eigen_simd += "sse4.2 ";
#endif
    d["eigen_simd"] = eigen_simd.empty() ? std::string("none") : eigen_simd.substr(0, eigen_simd.size() - 1);
    d["threads"] = num_threads();
    return d;
  });

  m.def(
      "fill_uniform",
      [](py::array out, std::uint64_t seed, std::uint64_t stream, double low, double high) {
        Index rows, cols;
        matrix_shape(out, rows, cols, "out");
        require(std::isfinite(low) && std::isfinite(high) && low <= high,
                "uniform bounds must be finite with low <= high");
        RandomKey key{mix_seed(seed, 1), stream};
        const float lo = static_cast<float>(low), span = static_cast<float>(high - low);
        float* p = fmut(out);
        py::gil_scoped_release nogil;
        fill(p, rows * cols, [&](std::uint64_t i) { return lo + span * key.uniform(i); });
      },
      py::arg("out"), py::arg("seed"), py::arg("stream"), py::arg("low"), py::arg("high"),
      "out[i] ~ U[low, high) keyed by (seed, stream, i)");

  m.def(
      "fill_normal",
      [](py::array out, std::uint64_t seed, std::uint64_t stream, double mean, double std,
         double truncate) {
        Index rows, cols;
        matrix_shape(out, rows, cols, "out");
        require(std::isfinite(mean) && std::isfinite(std) && std >= 0, "normal needs finite mean and std >= 0");
        require(truncate == 0 || truncate > 0.1, "truncation must be 0 (none) or > 0.1 standard deviations");
        float* p = fmut(out);
        py::gil_scoped_release nogil;
        fill(p, rows * cols, [&](std::uint64_t i) {
          // Rejection sampling where each retry uses a fresh stream: the
          // result for element i still depends only on (seed, stream, i).
          for (std::uint64_t round = 0;; ++round) {
            RandomKey key{mix_seed(seed, 2 + round), stream};
            double z = key.normal(i);
            if (truncate == 0 || std::fabs(z) <= truncate)
              return static_cast<float>(mean + std * z);
          }
        });
      },
      py::arg("out"), py::arg("seed"), py::arg("stream"), py::arg("mean"), py::arg("std"),
      py::arg("truncate") = 0.0,
      "out[i] ~ N(mean, std^2), re-drawn beyond |z| > truncate when truncate > 0");
}

}  // namespace nerve::bind
