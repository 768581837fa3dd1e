#include "ops/ctc_prefix.h"

#include <string>

#include "attnkit/errors.h"
#include "cpu/isa.h"

namespace attnkit {

void ctc_prefix_scores_cpu(const CtcPrefixParams& p) {
  if (p.window)
    throw UnsupportedError("ctc_prefix_scores: window (device-held bounds) is for the GPU kernel; the CPU takes "
                           "start and end");
  if (p.start < 1)
    throw ValueError("ctc_prefix_scores: start must be >= 1 (frame 0 only starts a first label), got " +
                     std::to_string(p.start));
  if (p.end > p.T)
    throw ValueError("ctc_prefix_scores: end must be <= T=" + std::to_string(p.T) + ", got " + std::to_string(p.end));
  auto check_cols = [&](const int64_t* cols, int64_t n, const char* name) {
    for (int64_t i = 0; i < n; ++i)
      if (cols[i] < 0 || cols[i] >= p.M)
        throw ValueError(std::string("ctc_prefix_scores: ") + name + " must lie in [0, M=" + std::to_string(p.M) +
                         "), got " + std::to_string(cols[i]) + " at " + std::to_string(i));
  };
  check_cols(p.label_col, p.N * p.C, "label_col");
  check_cols(p.blank_col, p.N, "blank_col");
  if (p.N == 0 || p.C == 0) return;
  if (p.T == 0) {  // no frame for any candidate (start >= 1 > T): psi is logzero, as for any start > T
    for (int64_t i = 0; i < p.N * p.C; ++i) {
      if (p.dtype == DType::f32)
        static_cast<float*>(p.psi)[i] = float(p.logzero);
      else
        static_cast<double*>(p.psi)[i] = p.logzero;
    }
    return;
  }
  ATTNKIT_CPU_DISPATCH(ctc_prefix_scores, p);
}

}  // namespace attnkit
