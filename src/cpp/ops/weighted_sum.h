#pragma once
#include "attnkit/params.h"

namespace attnkit {

// The attention context of given weights on the active CPU ISA (WeightedSumParams); checks that
// rows and lengths lie in range (shapes already checked by the binding).
void weighted_sum_cpu(const WeightedSumParams& p);

}  // namespace attnkit
