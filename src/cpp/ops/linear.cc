#include "ops/linear.h"

#include "cpu/isa.h"

namespace attnkit {

void linear_cpu(const LinearParams& p) {
  if (p.N == 0 || p.A == 0) return;
  ATTNKIT_CPU_DISPATCH(linear, p);
}

void pack_linear_weight_cpu(const PackLinearParams& p) {
  if (p.A == 0 || p.K == 0) return;
  ATTNKIT_CPU_DISPATCH(pack_linear_weight, p);
}

}  // namespace attnkit
