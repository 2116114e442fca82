// Adam's decaying-lanes path (cpp/src/optim/adam.cpp): whether the vector
// kernels make the moments of weights without gradient, decaying through
// the subnormal range, in double. The bits are the same either way; only
// the speed differs, by CPU, so the choice is timed once per process unless
// set.
#pragma once

namespace nerve {

enum : int { kDecayingUnread = -2, kDecayingAuto = -1, kDecayingOff = 0, kDecayingOn = 1 };

// Best-of-9 seconds of each kernel on the probe's workload (0, 0 at the
// generic level, which has no such path).
struct DecayingProbe {
  double plain_s, lanes_s;
};
DecayingProbe adam_decaying_probe();

// kDecayingAuto (the default, or NERVE_ADAM_DECAYING_LANES=auto), Off or On.
int adam_decaying_mode();
void set_adam_decaying_mode(int mode);  // throws ValueError for another value
// What the next Adam step uses (auto: the probe's verdict, timed at the first call).
bool decaying_lanes_in_use();

}  // namespace nerve
