#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Runs log_softmax over the rows on the active CPU ISA (shapes already checked by the binding).
void log_softmax_cpu(const LogSoftmaxParams& p);

}  // namespace attnkit
