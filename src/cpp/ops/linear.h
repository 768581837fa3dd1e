#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Runs y = x w^T + b on the active CPU ISA (shapes already checked by the binding).
void linear_cpu(const LinearParams& p);

}  // namespace attnkit
