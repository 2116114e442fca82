// Compiled without -mavx2: reports which CPU features the kernels were built
// for and which of them this CPU lacks, before nerve._core is loaded.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace py = pybind11;

static std::vector<std::string> required_features() {
  std::string simd = NERVE_SIMD_BUILD;
  if (simd == "avx2") return {"avx", "avx2", "fma"};
  return {};  // "generic" needs nothing; "native" was built for this very machine
}

static std::vector<std::string> missing_features() {
  std::vector<std::string> missing;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  for (const std::string& f : required_features()) {
    bool ok = true;
    if (f == "avx") ok = __builtin_cpu_supports("avx");
    else if (f == "avx2") ok = __builtin_cpu_supports("avx2");
    else if (f == "fma") ok = __builtin_cpu_supports("fma");
    if (!ok) missing.push_back(f);
  }
#endif
  return missing;
}

PYBIND11_MODULE(_cpucheck, m) {
  m.attr("simd_build") = NERVE_SIMD_BUILD;
  m.def("required_features", &required_features);
  m.def("missing_features", &missing_features);
}
