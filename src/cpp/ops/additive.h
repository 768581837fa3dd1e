#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Checks the lengths and row map of p and runs the fused additive attention step on the active
// CPU ISA. Throws ValueError naming the argument.
void additive_step_cpu(const AdditiveStepParams& p);

}  // namespace attnkit
