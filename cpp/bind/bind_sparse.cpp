// Sparse inference kernels (model.optimize_for_inference): the SparseDense
// layer and the bare product, for tests and benchmarks.
#include "common.hpp"
#include "nerve/parallel.hpp"
#include "nerve/skinny.hpp"
#include "nerve/sparse.hpp"

namespace nerve::bind {

namespace {

void check_kernel(const py::array& kernel, Index& in, Index& out) {
  matrix_shape(kernel, in, out, "kernel");
  require(kernel.ndim() == 2 && in > 0 && out > 0, "kernel must be a non-empty 2-D (in, out) array");
}

}  // namespace

void bind_sparse(py::module_& m) {
  py::class_<SparseDense, Layer, std::shared_ptr<SparseDense>>(m, "SparseDense")
      .def(py::init([](py::array kernel, py::object bias, const Activation& act, bool dense_single_rows) {
             Index in, out;
             check_kernel(kernel, in, out);
             const float* b = nullptr;
             py::array bias_arr;
             if (!bias.is_none()) {
               bias_arr = bias.cast<py::array>();
               Index rows, cols;
               matrix_shape(bias_arr, rows, cols, "bias");
               require(bias_arr.ndim() == 1 && rows == out, "bias must have shape (units,)");
               b = fptr(bias_arr);
             }
             return std::make_shared<SparseDense>(in, out, act, fptr(kernel), b, dense_single_rows);
           }),
           py::arg("kernel"), py::arg("bias"), py::arg("activation"), py::arg("dense_single_rows") = false,
           "A predict-only Dense layer with a CSR copy of `kernel` (in, units)")
      .def_readonly("units", &SparseDense::units)
      .def_property_readonly("nnz", [](const SparseDense& d) { return d.weights.nnz(); })
      .def_property_readonly("dense_single_rows", [](const SparseDense& d) { return d.dense_kernel.size() > 0; });

  m.def(
      "sparse_matmul",
      [](py::array kernel, py::array x) {
        Index in, out, rows, cols;
        check_kernel(kernel, in, out);
        matrix_shape(x, rows, cols, "x");
        require(x.ndim() == 2 && cols == in && rows > 0,
                "x must have shape (batch, " + std::to_string(in) + ")");
        CsrMatrix w = csr_from_kernel(fptr(kernel), in, out);
        const int t = std::max(1, num_threads());
        AlignedBuffer work(static_cast<Index>(t) * sparse_workspace_per_thread(w));
        FloatArray y(std::vector<py::ssize_t>{rows, out});
        float* yp = y.mutable_data();
        const float* xp = fptr(x);
        {
          py::gil_scoped_release nogil;
          if (rows < kSparsePanelMin)
            sparse_matmul_small(sell_from_csr(w), xp, rows, yp, t);
          else
            sparse_matmul(w, xp, rows, yp, work.data(), t);
        }
        return y;
      },
      py::arg("kernel"), py::arg("x"), "x @ kernel through the CSR product (builds the CSR each call)");

  // The most rows skinny_gemm takes at this level (16; 32 at avx512).
  m.attr("skinny_max_rows") = py::int_(kSkinnyMaxRows);
  m.def(
      "skinny_gemm",
      [](py::array a, py::array b) {
        Index M, K, K2, N;
        matrix_shape(a, M, K, "a");
        matrix_shape(b, K2, N, "b");
        require(a.ndim() == 2 && b.ndim() == 2 && K == K2, "a (M, K) and b (K, N) must be 2-D with matching K");
        require(skinny_applies(M, N, K), "skinny_gemm takes 2 <= M <= " + std::to_string(kSkinnyMaxRows) +
                                             ", N >= 8, K >= 16");
        FloatArray c(std::vector<py::ssize_t>{M, N});
        float* cp = c.mutable_data();
        const float *ap = fptr(a), *bp = fptr(b);
        {
          py::gil_scoped_release nogil;
          skinny_gemm(M, N, K, ap, K, bp, N, cp, N);
        }
        return c;
      },
      py::arg("a"), py::arg("b"), "a @ b through the few-row inference product");
}

}  // namespace nerve::bind
