#include "ops/location_conv.h"

#include "cpu/isa.h"

namespace attnkit {

void location_conv_cpu(const LocationConvParams& p) {
  if (p.N == 0 || p.C == 0 || p.T == 0) return;
  ATTNKIT_CPU_DISPATCH(location_conv, p);
}

}  // namespace attnkit
