#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Runs y = x w^T + b on the active CPU ISA (shapes already checked by the binding).
void linear_cpu(const LinearParams& p);

// weight [A, K] into LinearParams' packed panels [ceil(A/P), K, P] (shapes already checked).
void pack_linear_weight_cpu(const PackLinearParams& p);

}  // namespace attnkit
