// The attention context of given weights as an op of its own (WeightedSumParams in params.h),
// compiled once per ISA, for the classes whose weights do not come out of the fused step: the
// Forward family (weights clamped and renormalised after the softmax) and NoAtt. The tiles are
// the fused step's (cpu/weighted_sum.h). A NumPy matrix product per utterance took 171 us for
// N = 10 utterances, T = 200, Ev = 320 at 2 threads, for 0.64 M multiply-adds.
#include <algorithm>
#include <vector>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/row_groups.h"
#include "cpu/vec.h"
#include "cpu/weighted_sum.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

template <typename T>
void run(const WeightedSumParams& p) {
  constexpr int W = lanes<T>();
  const WeightedSum<T> sum{static_cast<const T*>(p.w), static_cast<const T*>(p.values), static_cast<T*>(p.out),
                           p.T, p.Ev};
  // Rows grouped by utterance, in slices of at most kCtxRows: one register tile each, so each
  // vector of the values feeds every row of its slice.
  const RowGroups groups(p.rows, p.N, p.B);
  const std::vector<int64_t>& order = groups.order;
  const std::vector<int64_t>& start = groups.start;
  struct Slice {
    int64_t i0, i1, b;
  };
  std::vector<Slice> slices;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t i = start[b]; i < start[b + 1]; i += kCtxRows)
      slices.push_back({i, std::min(start[b + 1], i + kCtxRows), b});
  // Fewer slices than threads (one row, one small beam): each slice's columns are cut too, in
  // whole vectors. The sums do not depend on the cut (cpu/weighted_sum.h).
  const int64_t threads = num_threads(), ns = int64_t(slices.size());
  const int64_t e_vecs = (p.Ev + W - 1) / W;
  const int64_t e_parts = std::max<int64_t>(1, std::min((threads + ns - 1) / ns, e_vecs));
  auto part = [&](int64_t, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const Slice& sl = slices[k / e_parts];
      const int64_t j = k % e_parts;
      const int64_t e0 = j * e_vecs / e_parts * W, e1 = std::min(p.Ev, (j + 1) * e_vecs / e_parts * W);
      sum(order.data() + sl.i0, sl.i1 - sl.i0, sl.b, p.lengths ? p.lengths[sl.b] : p.T, e0, e1);  // L = 0: zeros
    }
  };
  // ~2 multiply-adds per cycle and lane from L2: threads from ~2^17 multiply-adds (~4 us) on.
  if (double(p.N) * double(p.T) * double(p.Ev) >= double(1 << 17))
    parallel_for(ns * e_parts, part);
  else
    part(0, 0, ns * e_parts);
}

}  // namespace

void weighted_sum(const WeightedSumParams& p) {
  if (p.dtype == DType::f32)
    run<float>(p);
  else
    run<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
