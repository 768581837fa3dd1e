#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Checks p (shapes, strides, lengths, scale) and runs it on the active CPU ISA.
// Throws ValueError / TypeError naming the argument; std::bad_alloc when scratch memory is short.
void scaled_dot_product_attention_cpu(const SdpaParams& p);

}  // namespace attnkit
