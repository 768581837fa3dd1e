// CTC prefix scores (CtcPrefixParams in params.h), compiled once per ISA. The recursion runs
// frame by frame, so the lanes (prefix x candidate, flattened) are what the vectors and threads
// share out: a task is a block of kBlockVecs vectors of lanes, whose running r^n and r^b stay in
// registers across the frames; the blank's log-posterior of each lane's prefix is spread into a
// small buffer per frame. It replaces a NumPy loop of ~5 calls per frame (benchmarks/NOTES.md,
// "CTC prefix scores").
#include <algorithm>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

namespace {

constexpr int kBlockVecs = 4;

// exp(x) for x <= 0 (or NaN).
template <typename T> inline Vec<T> exp_nonpositive(Vec<T> x) { return exp2v<T>(x * T(1.4426950408889634)); }

// Lanes [lane0, lane0 + width) of the N x C lanes; width <= kBlockVecs * lanes.
template <typename T>
void block(const CtcPrefixParams& p, int64_t lane0, int64_t width) {
  constexpr int W = lanes<T>();
  const int nv = int((width + W - 1) / W);
  const int64_t L = p.N * p.C;
  const T* xs = static_cast<const T*>(p.xs) + lane0;
  const T* phi = static_cast<const T*>(p.log_phi) + lane0;
  T* r = static_cast<T*>(p.r) + lane0;
  const T zero_log = T(p.logzero);
  // Only the last vector of the last block is partial (a memcpy of runtime length).
  auto get = [&](const T* a, int v) {
    const int64_t k = int64_t(v) * W;
    return width - k >= W ? load(a + k) : load_partial(a + k, int(width - k));
  };
  auto put = [&](T* a, int v, Vec<T> x) {
    const int64_t k = int64_t(v) * W;
    if (width - k >= W) store(a + k, x);
    else store_partial(a + k, x, int(width - k));
  };
  const int64_t start = std::min(p.start, p.T), end = std::max(std::min(p.end, p.T), start);

  // Frames before the range (r^n of frame 0 holds the first label's x) and after it.
  for (int64_t t = 0; t < p.T; ++t) {
    if (t >= start && t < end) continue;
    for (int v = 0; v < nv; ++v) {
      put(r + (2 * t) * L, v, t == 0 && p.first_label ? get(xs, v) : splat<T>(zero_log));
      put(r + (2 * t + 1) * L, v, splat<T>(zero_log));
    }
  }
  if (p.start > p.T) {  // a prefix longer than the input: no frame left for the candidate
    for (int v = 0; v < nv; ++v) put(static_cast<T*>(p.psi) + lane0, v, splat<T>(zero_log));
    return;
  }

  int64_t prefix_of[kBlockVecs * W];  // each lane's prefix n, for its blank log-posterior
  alignas(64) T blank[kBlockVecs * W] = {};
  for (int64_t j = 0; j < width; ++j) prefix_of[j] = (lane0 + j) / p.C;
  // Every vector of the block in each step, padding vectors computing on zeros: the
  // 2 x kBlockVecs logaddexp chains of a frame are independent, and interleave.
  Vec<T> rn[kBlockVecs], rb[kBlockVecs], top[kBlockVecs], sum[kBlockVecs];
  for (int v = 0; v < kBlockVecs; ++v) {
    rn[v] = v < nv ? get(r + (2 * (start - 1)) * L, v) : splat<T>(T(0));
    rb[v] = splat<T>(zero_log);
    top[v] = rn[v];
    sum[v] = splat<T>(T(0));
  }
  // psi's terms in two passes: their maximum first, then the sum of exp(term - max) beside the
  // recursion (one exp per term, where a running maximum would rescale with a second).
  for (int64_t t = start; t < end; ++t)
    for (int v = 0; v < nv; ++v) top[v] = vmax<T>(top[v], get(phi + (t - 1) * L, v) + get(xs + t * L, v));
  const T* x_blank = static_cast<const T*>(p.x_blank);
  for (int64_t t = start; t < end; ++t) {
    for (int64_t j = 0; j < width; ++j) blank[j] = x_blank[t * p.N + prefix_of[j]];
    Vec<T> a[2 * kBlockVecs], b[2 * kBlockVecs], lae[2 * kBlockVecs], x[kBlockVecs], term[kBlockVecs];
    for (int v = 0; v < kBlockVecs; ++v) {
      const Vec<T> phi_prev = v < nv ? get(phi + (t - 1) * L, v) : splat<T>(T(0));
      x[v] = v < nv ? get(xs + t * L, v) : splat<T>(T(0));
      a[v] = rn[v], b[v] = phi_prev;                           // r^n: logaddexp(r^n, phi)
      a[kBlockVecs + v] = rn[v], b[kBlockVecs + v] = rb[v];    // r^b: logaddexp(r^n, r^b)
      term[v] = phi_prev + x[v] - top[v];
    }
    log_add_exp<T, 2 * kBlockVecs>(a, b, lae);
    for (int v = 0; v < kBlockVecs; ++v) {
      rn[v] = lae[v] + x[v];
      rb[v] = lae[kBlockVecs + v] + load(blank + v * W);
      sum[v] += exp_nonpositive<T>(term[v]);
    }
    for (int v = 0; v < nv; ++v) {
      put(r + (2 * t) * L, v, rn[v]);
      put(r + (2 * t + 1) * L, v, rb[v]);
    }
  }
  for (int v = 0; v < nv; ++v) {
    // vmax drops a NaN term from the maximum; the term's exp brings it back into the sum.
    const Vec<T> first = get(r + (2 * (start - 1)) * L, v);
    const Vec<T> total = sum[v] + exp_nonpositive<T>(first - top[v]);
    put(static_cast<T*>(p.psi) + lane0, v, top[v] + logv<T>(total));
  }
}

template <typename T>
void run(const CtcPrefixParams& p) {
  const int64_t span = int64_t(kBlockVecs) * lanes<T>(), L = p.N * p.C;
  parallel_for((L + span - 1) / span, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) block<T>(p, i * span, std::min(span, L - i * span));
  });
}

}  // namespace

void ctc_prefix_scores(const CtcPrefixParams& p) {
  if (p.dtype == DType::f32)
    run<float>(p);
  else
    run<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
