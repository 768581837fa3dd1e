#include "ops/weighted_sum.h"

#include <string>

#include "attnkit/errors.h"
#include "cpu/isa.h"

namespace attnkit {

void weighted_sum_cpu(const WeightedSumParams& p) {
  const std::string op = "weighted_sum: ";
  for (int64_t b = 0; p.lengths && b < p.B; ++b)
    if (p.lengths[b] < 0 || p.lengths[b] > p.T)
      throw ValueError(op + "lengths must lie in [0, T=" + std::to_string(p.T) + "], got lengths[" +
                       std::to_string(b) + "]=" + std::to_string(p.lengths[b]));
  for (int64_t n = 0; n < p.N; ++n)
    if (p.rows[n] < 0 || p.rows[n] >= p.B)
      throw ValueError(op + "rows must lie in [0, B=" + std::to_string(p.B) + "), got rows[" + std::to_string(n) +
                       "]=" + std::to_string(p.rows[n]));
  if (p.N == 0 || p.Ev == 0) return;
  ATTNKIT_CPU_DISPATCH(weighted_sum, p);
}

}  // namespace attnkit
