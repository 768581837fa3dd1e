#include "ops/additive.h"

#include <string>

#include "attnkit/errors.h"
#include "cpu/isa.h"

namespace attnkit {

void additive_step_cpu(const AdditiveStepParams& p) {
  const std::string op = "additive attention step: ";
  for (int64_t b = 0; b < p.B; ++b)
    if (p.lengths[b] < 1 || p.lengths[b] > p.T)
      throw ValueError(op + "lengths must lie in [1, T=" + std::to_string(p.T) + "], got lengths[" +
                       std::to_string(b) + "]=" + std::to_string(p.lengths[b]));
  for (int64_t n = 0; n < p.N; ++n)
    if (p.rows[n] < 0 || p.rows[n] >= p.B)
      throw ValueError(op + "rows must lie in [0, B=" + std::to_string(p.B) + "), got rows[" + std::to_string(n) +
                       "]=" + std::to_string(p.rows[n]));
  if (p.P_frames_inner && p.gvec)
    throw ValueError(op + "P stored frames-inner ([B, A, T]) serves dot-product energies only (gvec_w None)");
  if (!p.gvec && p.C > 0)
    throw ValueError(op + "dot-product energies (gvec_w None) take no location term (att_in must be None)");
  if (p.C > 0 && p.K % 2 == 0)
    throw ValueError(op + "the location kernel width must be odd (2F+1), got " + std::to_string(p.K));
  ATTNKIT_CPU_DISPATCH(additive_step, p);
}

}  // namespace attnkit
