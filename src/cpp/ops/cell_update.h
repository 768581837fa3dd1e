#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Runs one LSTM or GRU cell step on the active CPU ISA (shapes already checked by the binding).
void cell_update_cpu(const CellUpdateParams& p);

}  // namespace attnkit
