#include "ops/log_softmax.h"

#include "cpu/isa.h"

namespace attnkit {

void log_softmax_cpu(const LogSoftmaxParams& p) {
  if (p.N == 0 || p.V == 0) return;
  ATTNKIT_CPU_DISPATCH(log_softmax, p);
}

}  // namespace attnkit
