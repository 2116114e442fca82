// The table of optimizers, and what every policy shares: defaults,
// validation from the specs, error messages.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "nerve/optim/policy.hpp"

namespace nerve {

// One line per optimizer (each defined in its own file here).
const Policy& sgd_policy();
const Policy& adagrad_policy();
const Policy& rmsprop_policy();
const Policy& adadelta_policy();
const Policy& adam_policy();
const Policy& adamw_policy();
const Policy& adamax_policy();
const Policy& nadam_policy();
const Policy& ftrl_policy();
const Policy& lion_policy();
const Policy& adabelief_policy();

const std::vector<const Policy*>& optimizer_policies() {
  static const std::vector<const Policy*> table{
      &sgd_policy(),   &adagrad_policy(), &rmsprop_policy(), &adadelta_policy(), &adam_policy(),
      &adamw_policy(), &adamax_policy(),  &nadam_policy(),   &ftrl_policy(),   &lion_policy(),
      &adabelief_policy(),
  };
  return table;
}

const Policy& optimizer_policy(const std::string& name) {
  std::string known;
  for (const Policy* p : optimizer_policies()) {
    if (name == p->name()) return *p;
    known += (known.empty() ? "" : ", ") + std::string(p->name());
  }
  throw ValueError("unknown optimizer '" + name + "' (known: " + known + ")");
}

int Policy::index_of(const char* name) const {
  const auto& specs = hyper();
  for (std::size_t i = 0; i < specs.size(); ++i)
    if (std::string(specs[i].name) == name) return static_cast<int>(i);
  return -1;
}

std::string format_value(double x) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

void check_hyper(bool ok, const char* param, double value, const char* rule) {
  if (!ok) throw ValueError(std::string("Invalid ") + param + " value: " + format_value(value) + " (" + rule + ")");
}

namespace {

// "must be in [0, 1)", "must be >= 0", "must be > 0", "must be <= 0".
std::string rule_text(const HyperSpec& s) {
  const bool has_lo = std::isfinite(s.lo), has_hi = std::isfinite(s.hi);
  const bool lo_open = s.lo_bound == Bound::Open, hi_open = s.hi_bound == Bound::Open;
  if (s.flag) return "must be True or False";
  if (has_lo && has_hi)
    return "must be in " + std::string(lo_open ? "(" : "[") + format_value(s.lo) + ", " + format_value(s.hi) +
           (hi_open ? ")" : "]");
  if (has_lo) return std::string(lo_open ? "must be > " : "must be >= ") + format_value(s.lo);
  if (has_hi) return std::string(hi_open ? "must be < " : "must be <= ") + format_value(s.hi);
  return "must be a number";
}

bool in_range(const HyperSpec& s, double x) {
  if (s.flag) return x == 0.0 || x == 1.0;
  const bool lo_ok = s.lo_bound == Bound::Open ? x > s.lo : x >= s.lo;
  const bool hi_ok = s.hi_bound == Bound::Open ? x < s.hi : x <= s.hi;
  return lo_ok && hi_ok;  // NaN fails both
}

}  // namespace

void validate_hyper(const HyperValues& h) {
  require(h.policy != nullptr, "optimizer hyper-parameters without an optimizer");
  const auto& specs = h.policy->hyper();
  require(h.v.size() == specs.size(), "optimizer hyper-parameters do not match the optimizer");
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const HyperSpec& s = specs[i];
    const double x = h.v[i];
    if (!in_range(s, x)) {
      // Built only here: step() re-validates on every call.
      throw ValueError(std::string("Invalid ") + s.name + " value: " + format_value(x) + " (" + rule_text(s) + ")");
    }
    // The kernels round every value to float32 once: beyond its range the
    // step would run on inf.
    check_hyper(std::isfinite(x) && std::fabs(x) <= static_cast<double>(FLT_MAX), s.name, x,
                "must be finite and within the float32 range, |x| <= 3.4028235e+38");
  }
  h.policy->validate(h);
}

HyperValues make_hyper(const Policy& policy, const std::vector<std::pair<std::string, double>>& values) {
  HyperValues h;
  h.policy = &policy;
  for (const HyperSpec& s : policy.hyper()) h.v.push_back(s.default_value);
  for (const auto& kv : values) {
    const int i = policy.index_of(kv.first.c_str());
    if (i < 0) {
      std::string takes;
      for (const HyperSpec& s : policy.hyper()) takes += (takes.empty() ? "" : ", ") + std::string(s.name);
      throw ValueError(std::string(policy.name()) + " has no hyper-parameter '" + kv.first + "' (it takes: " +
                       takes + ")");
    }
    h.v[static_cast<std::size_t>(i)] = kv.second;
  }
  validate_hyper(h);
  return h;
}

}  // namespace nerve
