#include "ops/linear.h"

#include "cpu/isa.h"

namespace attnkit {

void linear_cpu(const LinearParams& p) {
  if (p.N == 0 || p.A == 0) return;
  ATTNKIT_CPU_DISPATCH(linear, p);
}

}  // namespace attnkit
