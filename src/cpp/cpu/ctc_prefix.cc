// CTC prefix scores (CtcPrefixParams in params.h), compiled once per ISA. The recursion runs
// frame by frame, so the lanes (prefix x candidate, flattened) are what the vectors and threads
// share out: a task is a block of kBlockVecs vectors of lanes, whose running r^n and r^b stay in
// registers across a chunk of frames. Each frame's inputs of the block (the candidates' and
// blanks' log-posteriors, phi) are gathered into small buffers first. It replaces a NumPy loop of
// ~5 calls per frame (benchmarks/NOTES.md, "CTC prefix scores").
#include <algorithm>
#include <memory>
#include <vector>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

namespace {

constexpr int kBlockVecs = 4;
// A thread's blocks walk the frames together, kFrameChunk frames at a time: a block reads one
// element of x per lane and frame, scattered over the row of all utterances' labels (M columns),
// and the blocks of one chunk share those rows while they are in cache.
constexpr int64_t kFrameChunk = 16;

// exp(x) for x <= 0 (or NaN).
template <typename T> inline Vec<T> exp_nonpositive(Vec<T> x) { return exp2v<T>(x * T(1.4426950408889634)); }

// Lanes [lane0, lane0 + width) of the N x C lanes; width <= kBlockVecs * lanes.
template <typename T>
struct Block {
  static constexpr int W = lanes<T>();
  static constexpr int kLanes = kBlockVecs * W;
  const CtcPrefixParams& p;
  int64_t lane0, width;
  int nv;
  // Where each lane's inputs of frame t are: x_src[j][t * M], blank_src[j][t * M] and
  // phi_src[j][t * N] (r^b of its prefix when the candidate repeats the last label, else r_sum).
  const T *x_src[kLanes], *blank_src[kLanes], *phi_src[kLanes];

  Block(const CtcPrefixParams& params, int64_t first, int64_t count)
      : p(params), lane0(first), width(count), nv(int((count + W - 1) / W)) {
    const T* x = static_cast<const T*>(p.x);
    for (int64_t j = 0; j < width; ++j) {
      const int64_t lane = lane0 + j, n = lane / p.C;
      x_src[j] = x + p.label_col[lane];
      blank_src[j] = x + p.blank_col[n];
      phi_src[j] = static_cast<const T*>(p.repeat[lane] ? p.r_blank : p.r_sum) + n;
    }
  }

  // Frame t's values of the lanes' sources into a buffer (padding lanes stay 0).
  void gather(const T* const* src, int64_t offset, T* out) const {
    for (int64_t j = 0; j < width; ++j) out[j] = src[j][offset];
  }

  void put(T* a, int v, Vec<T> value) const {  // only the last vector of the last block is partial
    const int64_t k = int64_t(v) * W;
    if (width - k >= W) store(a + k, value);
    else store_partial(a + k, value, int(width - k));
  }

  // The running values of the block's lanes between frame chunks: r^n, r^b, psi's first term
  // r[start - 1][0], the maximum of its terms and the sum of exp(term - maximum).
  struct State {
    Vec<T> rn[kBlockVecs], rb[kBlockVecs], first[kBlockVecs], top[kBlockVecs], sum[kBlockVecs];
  };

  int64_t start() const { return std::min(p.start, p.T); }
  int64_t end() const { return std::max(std::min(p.end, p.T), start()); }

  // Writes the frames outside [start, end) (r^n of frame 0 holds the first label's x) and sets up
  // the running values; with start > T (a prefix longer than the input) also psi = logzero.
  void begin(State& st) const {
    const int64_t L = p.N * p.C;
    T* r = static_cast<T*>(p.r) + lane0;
    const T zero_log = T(p.logzero);
    alignas(64) T xs[kLanes] = {};
    if (p.first_label) gather(x_src, 0, xs);
    for (int64_t t = 0; t < p.T; ++t) {
      if (t >= start() && t < end()) continue;
      for (int v = 0; v < nv; ++v) {
        put(r + (2 * t) * L, v, t == 0 && p.first_label ? load(xs + v * W) : splat<T>(zero_log));
        put(r + (2 * t + 1) * L, v, splat<T>(zero_log));
      }
    }
    if (p.start > p.T)
      for (int v = 0; v < nv; ++v) put(static_cast<T*>(p.psi) + lane0, v, splat<T>(zero_log));
    for (int v = 0; v < kBlockVecs; ++v) {
      st.first[v] = start() == 1 && p.first_label ? load(xs + v * W) : splat<T>(zero_log);
      st.rn[v] = st.top[v] = st.first[v];
      st.rb[v] = splat<T>(zero_log);
      st.sum[v] = splat<T>(T(0));
    }
  }

  // The chunk's inputs, gathered before any math reads them: a vector load that spans several
  // scalar stores still in flight cannot be forwarded from them and waits.
  struct Chunk {
    alignas(64) T xs[kFrameChunk][kLanes], phi[kFrameChunk][kLanes], blank[kFrameChunk][kLanes];
  };
  void gather_chunk(int64_t t0, int64_t t1, Chunk& c, bool with_blank) const {
    for (int64_t t = t0; t < t1; ++t) {
      gather(phi_src, (t - 1) * p.N, c.phi[t - t0]);
      gather(x_src, t * p.M, c.xs[t - t0]);
      if (with_blank) gather(blank_src, t * p.M, c.blank[t - t0]);
    }
  }

  // psi's terms in two passes: their maximum first (this), then the sum of exp(term - max) beside
  // the recursion (one exp per term; a running maximum would need a second to rescale the sum,
  // and the first term, -inf or NaN, would need cases of its own).
  void max_pass(int64_t t0, int64_t t1, State& st, Chunk& c) const {
    gather_chunk(t0, t1, c, false);
    for (int64_t t = t0; t < t1; ++t)
      for (int v = 0; v < kBlockVecs; ++v)
        st.top[v] = vmax<T>(st.top[v], load(c.phi[t - t0] + v * W) + load(c.xs[t - t0] + v * W));
  }

  // Frames [t0, t1) (at most kFrameChunk): every vector of the block in each step, padding
  // vectors computing on zeros, so that the 2 x kBlockVecs logaddexp chains of a frame interleave.
  void recursion(int64_t t0, int64_t t1, State& st, Chunk& c) const {
    const int64_t L = p.N * p.C;
    T* r = static_cast<T*>(p.r) + lane0;
    gather_chunk(t0, t1, c, true);
    for (int64_t t = t0; t < t1; ++t) {
      const T *x_t = c.xs[t - t0], *phi_t = c.phi[t - t0], *blank_t = c.blank[t - t0];
      Vec<T> a[2 * kBlockVecs], b[2 * kBlockVecs], lae[2 * kBlockVecs];
      for (int v = 0; v < kBlockVecs; ++v) {
        a[v] = st.rn[v], b[v] = load(phi_t + v * W);                 // r^n: logaddexp(r^n, phi)
        a[kBlockVecs + v] = st.rn[v], b[kBlockVecs + v] = st.rb[v];  // r^b: logaddexp(r^n, r^b)
      }
      log_add_exp<T, 2 * kBlockVecs>(a, b, lae);
      for (int v = 0; v < kBlockVecs; ++v) {
        const Vec<T> x = load(x_t + v * W);
        st.sum[v] += exp_nonpositive<T>(b[v] + x - st.top[v]);
        st.rn[v] = lae[v] + x;
        st.rb[v] = lae[kBlockVecs + v] + load(blank_t + v * W);
      }
      for (int v = 0; v < nv; ++v) {
        put(r + (2 * t) * L, v, st.rn[v]);
        put(r + (2 * t + 1) * L, v, st.rb[v]);
      }
    }
  }

  void finish(const State& st) const {
    for (int v = 0; v < nv; ++v) {
      // vmax drops a NaN term from the maximum; the term's exp brings it back into the sum.
      const Vec<T> total = st.sum[v] + exp_nonpositive<T>(st.first[v] - st.top[v]);
      put(static_cast<T*>(p.psi) + lane0, v, st.top[v] + logv<T>(total));
    }
  }
};

template <typename T>
void run(const CtcPrefixParams& p) {
  const int64_t span = int64_t(kBlockVecs) * lanes<T>(), L = p.N * p.C;
  parallel_for((L + span - 1) / span, [&](int64_t, int64_t first, int64_t last) {
    std::vector<Block<T>> blocks;
    blocks.reserve(size_t(last - first));
    for (int64_t i = first; i < last; ++i) blocks.emplace_back(p, i * span, std::min(span, L - i * span));
    std::vector<typename Block<T>::State> states(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i].begin(states[i]);
    if (p.start > p.T) return;
    const int64_t start = blocks.front().start(), end = blocks.front().end();
    std::unique_ptr<typename Block<T>::Chunk> chunk(new typename Block<T>::Chunk());  // 6 KiB in float32, zeroed
    for (int64_t t0 = start; t0 < end; t0 += kFrameChunk)
      for (size_t i = 0; i < blocks.size(); ++i)
        blocks[i].max_pass(t0, std::min(end, t0 + kFrameChunk), states[i], *chunk);
    for (int64_t t0 = start; t0 < end; t0 += kFrameChunk)
      for (size_t i = 0; i < blocks.size(); ++i)
        blocks[i].recursion(t0, std::min(end, t0 + kFrameChunk), states[i], *chunk);
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i].finish(states[i]);
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
