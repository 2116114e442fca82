// Checks of the vector abstraction (vec.hpp) and the maths written once on it
// (simd_math.hpp), at the CPU level this binary is compiled for: every lane
// of the level's vector gives the bits of the scalar instantiation (exp,
// expm1, log, log1p, tanh, sigmoid, the normal tail and pdf), the vector
// Philox gives rng.hpp's scalar blocks, and the lane sums, maxima, partial
// loads/stores and blends do what they say. Exits non-zero on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "nerve/rng.hpp"
#include "nerve/simd_math.hpp"
#include "nerve/vec.hpp"

using namespace nerve;
using simd::vf;
constexpr int W = simd::kLanes;

static int g_failures = 0;
#define CHECK(cond, ...)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      ++g_failures;                                    \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

static std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
static bool same(float a, float b) { return bits(a) == bits(b) || (std::isnan(a) && std::isnan(b)); }

// Inputs: a grid over [-lo, hi] plus specials.
static std::vector<float> inputs(float lo, float hi, int n) {
  std::vector<float> x;
  for (int i = 0; i < n; ++i) x.push_back(lo + (hi - lo) * static_cast<float>(i) / static_cast<float>(n - 1));
  for (float s : {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-40f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    x.push_back(s);
  while (x.size() % W) x.push_back(0.5f);
  return x;
}

// f at width W against f on each lane as float.
template <class Vec, class Scalar>
static void check_map(const char* name, const std::vector<float>& x, Vec vec_f, Scalar scalar_f) {
  int bad = 0;
  for (std::size_t i = 0; i < x.size(); i += W) {
    float out[W];
    simd::store(out, vec_f(simd::load<vf>(&x[i])));
    for (int l = 0; l < W; ++l) {
      const float ref = scalar_f(x[i + l]);
      if (!same(out[l], ref) && bad++ < 3)
        std::printf("  %s(%.9g): vector %.9g, scalar %.9g\n", name, x[i + l], out[l], ref);
    }
  }
  CHECK(bad == 0, "%s: %d lanes differ from the scalar instantiation", name, bad);
}

// The scalar instantiation against libm, loosely (the accuracy tests proper
// are the Python suite's, against numpy in double).
static void check_accuracy() {
  for (float x : inputs(-20.0f, 20.0f, 4001)) {
    if (!std::isfinite(x)) continue;
    const double e = std::exp(static_cast<double>(x));
    CHECK(std::fabs(simd::exp(x) - e) <= 4e-7 * e + 1e-37, "exp(%g) = %g, want %g", x, simd::exp(x), e);
    const double t = std::tanh(static_cast<double>(x));
    CHECK(std::fabs(simd::tanh(x) - t) <= 4e-7 * std::fabs(t) + 1e-37, "tanh(%g)", x);
    const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    CHECK(std::fabs(simd::sigmoid(x) - s) <= 6e-7 * s, "sigmoid(%g)", x);
    if (x >= std::numeric_limits<float>::min()) {  // log is for normal x > 0
      const double l = std::log(static_cast<double>(x));
      CHECK(std::fabs(simd::log(x) - l) <= 3e-7 * std::fabs(l) + 1e-7, "log(%g)", x);
    }
    const double tail = 0.5 * std::erfc(std::fabs(static_cast<double>(x)) / std::sqrt(2.0));
    CHECK(std::fabs(simd::normal_tail(x) - tail) <= 1e-6 * tail + 1e-40, "normal_tail(%g)", x);
  }
}

static void check_maths() {
  const std::vector<float> wide = inputs(-120.0f, 120.0f, 2001);
  const std::vector<float> pos = inputs(1e-6f, 1e6f, 2001);
  check_map("exp", wide, [](vf v) { return simd::exp(v); }, [](float v) { return simd::exp(v); });
  check_map("expm1", wide, [](vf v) { return simd::expm1(v); }, [](float v) { return simd::expm1(v); });
  check_map("tanh", wide, [](vf v) { return simd::tanh(v); }, [](float v) { return simd::tanh(v); });
  check_map("sigmoid", wide, [](vf v) { return simd::sigmoid(v); }, [](float v) { return simd::sigmoid(v); });
  check_map("exp_nonpos", wide, [](vf v) { return simd::exp_nonpos(-simd::abs_(v)); },
            [](float v) { return simd::exp_nonpos(-simd::abs_(v)); });
  check_map("log", pos, [](vf v) { return simd::log(v); }, [](float v) { return simd::log(v); });
  check_map("log1p_pos", pos, [](vf v) { return simd::log1p_pos(v); }, [](float v) { return simd::log1p_pos(v); });
  check_map("normal_tail", wide, [](vf v) { return simd::normal_tail(v); },
            [](float v) { return simd::normal_tail(v); });
  check_map("normal_pdf", wide, [](vf v) { return simd::normal_pdf(v); }, [](float v) { return simd::normal_pdf(v); });
  check_map("sigmoid2", wide, [](vf v) { return simd::sigmoid2(v, v * vf(1e-8f)); },
            [](float v) { return simd::sigmoid2(v, v * 1e-8f); });
}

static void check_philox() {
  const std::uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
  const RandomKey key{seed, stream};
  // Counters that carry into the high word inside one vector too.
  for (std::uint64_t first : {0ull, 12345ull, 0xfffffffdull, 0x1fffffff0ull}) {
    std::uint32_t out[4][W];
    simd::philox_blocks<simd::vi>(seed, stream, first, out);
    for (int l = 0; l < W; ++l) {
      std::uint32_t ref[4];
      key.block(first + l, ref);
      for (int w = 0; w < 4; ++w) CHECK(out[w][l] == ref[w], "philox block %llu word %d", (unsigned long long)(first + l), w);
    }
  }
  // The known-answer vector of Random123 (Philox4x32-10, counter and key 0).
  std::uint32_t kat[4];
  Philox4x32::generate(0, 0, 0, kat);
  CHECK(kat[0] == 0x6627e8d5u && kat[1] == 0xe169c58du && kat[2] == 0xbc57ac4cu && kat[3] == 0x9b00dbd8u,
        "Philox4x32-10 known answer: %08x %08x %08x %08x", kat[0], kat[1], kat[2], kat[3]);
}

static void check_lanes() {
  float x[2 * 16], y[2 * 16];
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i * i % 17) - 3.5f;
  float sum = 0.0f, mx = -1e30f;
  for (int l = 0; l < W; ++l) sum += x[l], mx = x[l] > mx ? x[l] : mx;
  CHECK(std::fabs(simd::reduce_add(simd::load<vf>(x)) - sum) <= 1e-5f, "reduce_add");
  CHECK(simd::reduce_max(simd::load<vf>(x)) == mx, "reduce_max");
  for (int n = 0; n <= W; ++n) {
    const vf p = simd::load_partial<vf>(x, n);
    for (int i = 0; i < 32; ++i) y[i] = -7.0f;
    simd::store_partial(y, p, n);
    for (int l = 0; l < W; ++l) CHECK(y[l] == (l < n ? x[l] : -7.0f), "partial load/store n=%d lane %d", n, l);
    simd::store(y, p);
    for (int l = n; l < W; ++l) CHECK(y[l] == 0.0f, "load_partial zero-fills lane %d (n=%d)", l, n);
  }
  // sel, min_ / max_ with NaN in the second operand keep the first.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float a[16], b[16];
  for (int l = 0; l < 16; ++l) a[l] = static_cast<float>(l), b[l] = l % 3 == 0 ? nan : 5.0f;
  simd::store(y, simd::max_(simd::load<vf>(a), simd::load<vf>(b)));
  for (int l = 0; l < W; ++l) CHECK(same(y[l], l % 3 == 0 ? a[l] : (a[l] < 5.0f ? 5.0f : a[l])), "max_ lane %d", l);
  simd::store(y, simd::min_(simd::load<vf>(a), simd::load<vf>(b)));
  for (int l = 0; l < W; ++l) CHECK(same(y[l], l % 3 == 0 ? a[l] : (5.0f < a[l] ? 5.0f : a[l])), "min_ lane %d", l);
  simd::store(y, simd::sel(simd::load<vf>(a) < vf(4.0f), vf(1.0f), vf(2.0f)));
  for (int l = 0; l < W; ++l) CHECK(y[l] == (a[l] < 4.0f ? 1.0f : 2.0f), "sel lane %d", l);
  simd::store(y, simd::copysign_(vf(3.0f), simd::load<vf>(x)));
  for (int l = 0; l < W; ++l) CHECK(y[l] == std::copysign(3.0f, x[l]), "copysign_ lane %d", l);
}

int main() {
  std::printf("vec_test: level %s, %d float lanes\n", NERVE_CPU_LEVEL, W);
  check_maths();
  check_philox();
  check_lanes();
  check_accuracy();
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all passed\n");
  return 0;
}
