#pragma once
#include "attnkit/params.h"

namespace attnkit {

// Runs ESPnet's location convolution on the active CPU ISA (shapes already checked by the binding).
void location_conv_cpu(const LocationConvParams& p);

}  // namespace attnkit
