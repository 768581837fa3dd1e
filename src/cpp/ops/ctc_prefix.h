#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Checks the frame range and the columns of p and runs the CTC prefix-score recursion on the active CPU ISA.
// Throws ValueError naming the argument.
void ctc_prefix_scores_cpu(const CtcPrefixParams& p);

}  // namespace attnkit
