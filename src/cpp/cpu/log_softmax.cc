// log_softmax over the rows of an [N][V] matrix (LogSoftmaxParams in params.h), compiled once per
// ISA: a decoder's or language model's output at every step, and the CTC posteriors once per
// utterance. NumPy's float32 exp is scalar here (~1-4 ns per element): the three NumPy passes of
// a beam-10 step over V = 5000 tokens took ~150 us, the kernel ~30-40 (benchmarks/NOTES.md).
#include <algorithm>
#include <cmath>
#include <limits>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

constexpr int kChains = 4;  // independent sums per row: an add's latency is 3-4 cycles

// y = (x - max) - log(sum(exp(x - max))), torch's order. A NaN anywhere in the row reaches the sum
// (exp2v passes it through, whatever the max picked), so the whole row comes out NaN, as in NumPy
// and torch; so does a row of -inf or with a +inf (x - max is NaN there).
template <typename T>
void row(const T* x, T* y, int64_t V) {
  constexpr int W = lanes<T>();
  using V_ = Vec<T>;
  const int64_t full = V / W * W;
  V_ mv = splat<T>(-std::numeric_limits<T>::infinity());
  for (int64_t k = 0; k < full; k += W) mv = vmax<T>(mv, load(x + k));
  T m = hmax<T>(mv);
  for (int64_t k = full; k < V; ++k) m = x[k] > m ? x[k] : m;
  const T log2e = T(1.4426950408889634);
  V_ acc[kChains] = {};
  int64_t k = 0;
  for (; k + kChains * W <= full; k += kChains * W)
    for (int j = 0; j < kChains; ++j) acc[j] += exp2v<T>((load(x + k + j * W) - m) * log2e);
  for (; k < full; k += W) acc[0] += exp2v<T>((load(x + k) - m) * log2e);
  T sum = 0;
  for (; k < V; ++k) sum += exp2v<T>(splat<T>((x[k] - m) * log2e))[0];
  for (int j = 1; j < kChains; ++j) acc[0] += acc[j];
  sum += hsum<T>(acc[0]);
  const T lse = std::log(sum);
  for (k = 0; k < full; k += W) store(y + k, (load(x + k) - m) - lse);
  for (; k < V; ++k) y[k] = (x[k] - m) - lse;
}

}  // namespace

void log_softmax(const LogSoftmaxParams& p) {
  // ~1-2 cycles per element: threads from 2^15 elements (~15 us) on.
  const bool parallel = p.N > 1 && p.N * p.V >= (int64_t(1) << 15);
  auto run = [&](int64_t, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (p.dtype == DType::f32)
        row<float>(static_cast<const float*>(p.x) + r * p.V, static_cast<float*>(p.y) + r * p.V, p.V);
      else
        row<double>(static_cast<const double*>(p.x) + r * p.V, static_cast<double*>(p.y) + r * p.V, p.V);
    }
  };
  if (parallel)
    parallel_for(p.N, run);
  else
    run(0, 0, p.N);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
