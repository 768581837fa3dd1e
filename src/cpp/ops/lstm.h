#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Checks the active-row counts of p and runs one LSTM layer direction on the active CPU ISA.
// Throws ValueError naming the argument.
void lstm_layer_cpu(const LstmLayerParams& p);

}  // namespace attnkit
