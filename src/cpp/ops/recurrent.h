#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Checks the active-row counts of p and runs one LSTM or GRU layer direction on the active CPU
// ISA. Throws ValueError naming the argument.
void recurrent_layer_cpu(const RecurrentLayerParams& p);

}  // namespace attnkit
