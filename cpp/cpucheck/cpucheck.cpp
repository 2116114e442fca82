// nerve._cpucheck: which CPU levels this install has and which of their
// features this CPU lacks, asked before any nerve._core_<level> is loaded.
// Compiled for the architecture's baseline ISA (no -mavx2): it must run on any
// CPU of the architecture to name the missing feature instead of dying on an
// illegal instruction. python/nerve/_loader.py picks the level from it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// The CPU features each level's kernels are compiled for (CMakeLists.txt's
// NERVE_FLAGS_<level>), in the names of GCC's __builtin_cpu_supports.
std::vector<std::string> level_features(const std::string& level) {
  if (level == "avx2") return {"avx", "avx2", "fma"};
  if (level == "avx512") return {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"};
  return {};  // generic: the architecture's baseline
}

bool cpu_has(const std::string& f) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc's checks include the OS's XSAVE support of the ymm / zmm state
  // (XGETBV), not only CPUID's bits.
  if (f == "avx") return __builtin_cpu_supports("avx");
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
#endif
  (void)f;
  return false;
}

std::vector<std::string> missing_features(const std::string& level) {
  std::vector<std::string> missing;
  for (const std::string& f : level_features(level))
    if (!cpu_has(f)) missing.push_back(f);
  return missing;
}

std::vector<std::string> built_levels() {
  std::vector<std::string> out;
  std::stringstream ss(NERVE_BUILT_LEVELS);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

}  // namespace

PYBIND11_MODULE(_cpucheck, m) {
  m.doc() = "CPU features of nerve's kernel levels (baseline ISA; private)";
  m.attr("all_levels") = std::vector<std::string>{"generic", "avx2", "avx512"};
  m.def("built_levels", &built_levels, "The levels this install was built with, lowest first");
  m.def("level_features", &level_features, py::arg("level"),
        "The CPU features a level's kernels are compiled for");
  m.def("missing_features", &missing_features, py::arg("level"),
        "The features of `level` this CPU lacks (empty: it runs the level)");
  m.def("cpu_has", &cpu_has, py::arg("feature"));
}
