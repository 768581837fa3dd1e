#include "ops/ctc_prefix.h"

#include <string>

#include "attnkit/errors.h"
#include "cpu/isa.h"

namespace attnkit {

void ctc_prefix_scores_cpu(const CtcPrefixParams& p) {
  if (p.start < 1)
    throw ValueError("ctc_prefix_scores: start must be >= 1 (frame 0 only starts a first label), got " +
                     std::to_string(p.start));
  if (p.end > p.T)
    throw ValueError("ctc_prefix_scores: end must be <= T=" + std::to_string(p.T) + ", got " + std::to_string(p.end));
  if (p.T == 0 || p.N == 0 || p.C == 0) return;
  ATTNKIT_CPU_DISPATCH(ctc_prefix_scores, p);
}

}  // namespace attnkit
