// Helpers shared by the bind_*.cpp files: strict numpy access (the Python
// layer converts and checks user input first; these checks guard the C++
// boundary itself so that a wrong array can never crash the process).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "nerve/common.hpp"

namespace nerve::bind {
namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style>;
using LabelArray = py::array_t<std::int64_t, py::array::c_style>;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Rows and columns of a float32 C-contiguous array viewed as a matrix (1-D is one column).
inline void matrix_shape(const py::array& a, Index& rows, Index& cols, const char* what) {
  if (!py::isinstance<FloatArray>(a) || !(a.flags() & py::array::c_style) ||
      a.dtype().kind() != 'f' || a.itemsize() != 4)
    throw ValueError(std::string(what) + " must be a C-contiguous float32 array");
  if (a.ndim() == 2) {
    rows = a.shape(0);
    cols = a.shape(1);
  } else if (a.ndim() == 1) {
    rows = a.shape(0);
    cols = 1;
  } else {
    throw ValueError(std::string(what) + " must be 1-D or 2-D, got shape " + shape_str(a));
  }
}

// Throws ValueError unless [offset, offset + size) lies inside an arena of
// `arena_size` floats. Never computes offset + size: it may not fit an Index
// (UBSan caught the old messages doing so for offsets near INT64_MAX).
inline void check_slice(Index arena_size, Index offset, Index size, const char* what) {
  if (offset >= 0 && size >= 0 && size <= arena_size && offset <= arena_size - size) return;
  throw ValueError(std::string(what) + " of " + std::to_string(size) + " floats at offset " +
                   std::to_string(offset) + " is outside an arena of " + std::to_string(arena_size) + " floats");
}

inline const float* fptr(const py::array& a) { return static_cast<const float*>(a.data()); }
inline float* fmut(py::array& a) { return static_cast<float*>(a.mutable_data()); }

void bind_core(py::module_& m);
void bind_activation(py::module_& m);
void bind_loss(py::module_& m);
void bind_optim(py::module_& m);
void bind_layers(py::module_& m);
void bind_sparse(py::module_& m);

}  // namespace nerve::bind
