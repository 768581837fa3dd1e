#include "ops/recurrent.h"

#include <string>

#include "attnkit/errors.h"
#include "cpu/isa.h"

namespace attnkit {

void recurrent_layer_cpu(const RecurrentLayerParams& p) {
  for (int64_t t = 0; t < p.T; ++t)
    if (p.active[t] < 0 || p.active[t] > p.B)
      throw ValueError("recurrent_layer: active must lie in [0, B=" + std::to_string(p.B) + "], got active[" +
                       std::to_string(t) + "]=" + std::to_string(p.active[t]));
  if (p.T == 0 || p.B == 0) return;
  ATTNKIT_CPU_DISPATCH(recurrent_layer, p);
}

}  // namespace attnkit
