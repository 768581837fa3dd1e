// Fused ESPnet additive / location-aware attention step (AdditiveStepParams in params.h),
// compiled once per ISA. Per task (a slice of rows of one utterance):
//   1. location features f[row][c][t] for the valid frames, vectorised over t (C accumulators
//      share each load of the zero-padded previous weights);
//   2. energies frame-block by frame-block, the rows of the slice inner, so each block of the
//      utterance's projection P (8 frames x A) is read from memory once for the whole beam;
//      e = gvec . tanh(P + q + f proj^T + bias), vectorised over A;
//   3. masked softmax with the scaling, and the context as one pass over the values.
// Nothing of size [N, T, A] is materialised.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/arena.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

constexpr int64_t kMaxRowsPerTask = 8;  // beam rows sharing each P block
constexpr int64_t kFrameBlock = 8;      // frames per P block (8 x 320 floats = 10 KiB)
constexpr double kLog2e = 1.4426950408889634;

// tanh(x) = 1 - 2 / (e^(2x) + 1), with x clamped where tanh is 1 to working precision (|x| = 9
// in float32, 19.5 in float64) and e^(2x) from exp2_core, which skips exp2v's -inf and NaN
// handling that energies never need. Absolute error about 1 ulp of 1.
template <typename T> inline Vec<T> tanhv(Vec<T> x) {
  const T lim = sizeof(T) == 8 ? T(19.5) : T(9);
  x = x < -lim ? splat<T>(-lim) : x;
  x = x > lim ? splat<T>(lim) : x;
  return T(1) - T(2) / (exp2_core<T>(x * T(2 * kLog2e)) + T(1));
}

template <typename T>
struct AdditiveKernel {
  static constexpr int W = lanes<T>();
  using V = Vec<T>;
  const AdditiveStepParams& p;
  const T *P, *values, *q, *att_in, *conv_w, *loc_bias, *gvec;
  std::vector<T> proj_t;  // [C][A_pad]: proj transposed so that a is contiguous
  std::vector<T> gvec_pad, bias_pad;
  int64_t A_pad, F, T_pad;
  std::atomic<bool> out_of_memory{false};

  explicit AdditiveKernel(const AdditiveStepParams& params)
      : p(params),
        P(static_cast<const T*>(params.P)),
        values(static_cast<const T*>(params.values)),
        q(static_cast<const T*>(params.q)),
        att_in(static_cast<const T*>(params.att_in)),
        conv_w(static_cast<const T*>(params.conv_w)),
        loc_bias(static_cast<const T*>(params.loc_bias)),
        gvec(static_cast<const T*>(params.gvec)) {
    A_pad = (p.A + W - 1) / W * W;
    F = (p.K - 1) / 2;
    // Whole vectors of frames, and whole groups of the 4 frames that energies() reads at once.
    const int64_t frame_quantum = std::max(W, 4);
    T_pad = (p.T + frame_quantum - 1) / frame_quantum * frame_quantum;
    // Zero-padded copies: the tail lanes past A then contribute gvec = 0 times tanh(...) = 0.
    gvec_pad.assign(A_pad, T(0));
    std::copy(gvec, gvec + p.A, gvec_pad.begin());
    bias_pad.assign(A_pad, T(0));
    if (loc_bias) std::copy(loc_bias, loc_bias + p.A, bias_pad.begin());
    if (p.C > 0) {
      const T* proj = static_cast<const T*>(p.proj);
      proj_t.assign(p.C * A_pad, T(0));
      for (int64_t a = 0; a < p.A; ++a)
        for (int64_t c = 0; c < p.C; ++c) proj_t[c * A_pad + a] = proj[a * p.C + c];
    }
  }

  // f[c][t] for t < L, from att_in[n] (R rows of T), into f (C x T_pad); pad is scratch of
  // R x (T_pad + 2F + W).
  void location_features(int64_t n, int64_t L, T* f, T* pad) const {
    const int64_t width = T_pad + 2 * F + W;
    for (int64_t r = 0; r < p.R; ++r) {
      T* row = pad + r * width;
      std::fill(row, row + width, T(0));
      std::copy(att_in + (n * p.R + r) * p.T, att_in + (n * p.R + r + 1) * p.T, row + F);
    }
    constexpr int kMaxC = 16;  // channels accumulated at once
    for (int64_t t = 0; t < L; t += W) {
      for (int64_t c0 = 0; c0 < p.C; c0 += kMaxC) {
        const int cn = int(std::min<int64_t>(kMaxC, p.C - c0));
        V acc[kMaxC];
        for (int c = 0; c < cn; ++c) acc[c] = V{};
        for (int64_t r = 0; r < p.R; ++r) {
          const T* x = pad + r * width + t;
          const T* wr = conv_w + (c0 * p.R + r) * p.K;
          for (int64_t j = 0; j < p.K; ++j) {
            const V xv = load(x + j);
            for (int c = 0; c < cn; ++c) acc[c] += splat<T>(wr[c * p.R * p.K + j]) * xv;
          }
        }
        for (int c = 0; c < cn; ++c) store(f + (c0 + c) * T_pad + t, acc[c]);
      }
    }
  }

  // e[t] for t in [t0, t1) of row n over utterance b, four frames at a time so that each
  // vector of the location projection is loaded once for four frames.
  void energies(int64_t n, int64_t b, int64_t t0, int64_t t1, const T* f, T* e) const {
    constexpr int kF = 4;
    const T* qn = q + n * p.A;
    const int64_t afull = p.A / W * W;
    const int atail = int(p.A - afull);
    for (int64_t t = t0; t < t1; t += kF) {
      const int nf = int(std::min<int64_t>(kF, t1 - t));
      V acc[kF] = {};
      for (int64_t a = 0; a < A_pad; a += W) {
        const V qa = a < afull ? load(qn + a) : load_partial(qn + a, atail);
        V x[kF];
        for (int k = 0; k < kF; ++k) {
          const T* Pt = P + (b * p.T + t + std::min(k, nf - 1)) * p.A + a;
          x[k] = (a < afull ? load(Pt) : load_partial(Pt, atail)) + qa;
        }
        if (p.C > 0) {
          const V bias = load(bias_pad.data() + a);
          for (int k = 0; k < kF; ++k) x[k] += bias;
          for (int64_t c = 0; c < p.C; ++c) {
            const V pc = load(proj_t.data() + c * A_pad + a);
            const T* fc = f + c * T_pad + t;  // T_pad >= t + kF: f is padded to whole vectors
            for (int k = 0; k < kF; ++k) x[k] += splat<T>(fc[k]) * pc;
          }
        }
        const V g = load(gvec_pad.data() + a);
        for (int k = 0; k < kF; ++k) acc[k] += g * tanhv<T>(x[k]);
      }
      for (int k = 0; k < nf; ++k) e[t + k] = hsum<T>(acc[k]);
    }
  }

  // w = softmax(scaling * e) over t < L, zeros to T; ctx = sum_t w[t] values[b,t,:].
  void softmax_context(int64_t n, int64_t b, int64_t L, T* e) const {
    T* w = static_cast<T*>(p.weights) + n * p.T;
    T* ctx = static_cast<T*>(p.context) + n * p.Ev;
    const T s2 = T(p.scaling * kLog2e);
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t t = 0; t < L; ++t) m = std::max(m, e[t]);
    T sum = 0;
    for (int64_t t = 0; t < L; ++t) {
      w[t] = exp2v<T>(splat<T>((e[t] - m) * s2))[0];
      sum += w[t];
    }
    const T inv = T(1) / sum;
    for (int64_t t = 0; t < L; ++t) w[t] *= inv;
    std::fill(w + L, w + p.T, T(0));
    std::fill(ctx, ctx + p.Ev, T(0));
    const int64_t efull = p.Ev / W * W;
    const int etail = int(p.Ev - efull);
    for (int64_t t = 0; t < L; ++t) {
      const V wt = splat<T>(w[t]);
      const T* vr = values + (b * p.T + t) * p.Ev;
      for (int64_t e0 = 0; e0 < efull; e0 += W) store(ctx + e0, load(ctx + e0) + wt * load(vr + e0));
      if (etail) store_partial(ctx + efull, load_partial(ctx + efull, etail) + wt * load_partial(vr + efull, etail), etail);
    }
  }

  void run() {
    // Group rows by utterance (stable), then cut each group into slices of kRowsPerTask.
    std::vector<int64_t> order(p.N);
    std::vector<int64_t> start(p.B + 1, 0);
    for (int64_t n = 0; n < p.N; ++n) ++start[p.rows[n] + 1];
    for (int64_t b = 0; b < p.B; ++b) start[b + 1] += start[b];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t n = 0; n < p.N; ++n) order[fill[p.rows[n]]++] = n;
    }
    // Slices of at most kMaxRowsPerTask rows, evened out so that one utterance's beam splits
    // into equal parts across the threads (10 rows on 2 threads: 5 + 5, not 4 + 4 + 2).
    const int64_t threads = num_threads();
    std::vector<std::pair<int64_t, int64_t>> tasks;  // [begin, end) into order
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t g = start[b + 1] - start[b];
      if (g == 0) continue;
      const int64_t slices = std::max((g + kMaxRowsPerTask - 1) / kMaxRowsPerTask, std::min(g, p.B == 1 ? threads : 1));
      for (int64_t s = 0; s < slices; ++s)
        tasks.emplace_back(start[b] + s * g / slices, start[b] + (s + 1) * g / slices);
    }
    const int64_t kRowsPerTask = kMaxRowsPerTask;

    ScratchLayout lay;
    const int64_t pad_width = T_pad + 2 * F + W;
    const std::size_t off_f = lay.add<T>(kRowsPerTask * std::max<int64_t>(p.C, 1) * T_pad);
    const std::size_t off_pad = lay.add<T>(std::max<int64_t>(p.R, 1) * pad_width);
    const std::size_t off_e = lay.add<T>(kRowsPerTask * T_pad);
    const std::size_t bytes = lay.bytes();

    parallel_for(int64_t(tasks.size()), [&](int64_t, int64_t begin, int64_t end) {
      void* base = thread_scratch(bytes);
      if (!base) {
        out_of_memory.store(true);
        return;
      }
      T* f = at<T>(base, off_f);
      T* pad = at<T>(base, off_pad);
      T* e = at<T>(base, off_e);
      for (int64_t task = begin; task < end; ++task) {
        const auto [i0, i1] = tasks[task];
        const int64_t b = p.rows[order[i0]], L = p.lengths[b];
        if (p.C > 0)
          for (int64_t i = i0; i < i1; ++i) location_features(order[i], L, f + (i - i0) * p.C * T_pad, pad);
        for (int64_t t0 = 0; t0 < L; t0 += kFrameBlock)
          for (int64_t i = i0; i < i1; ++i)
            energies(order[i], b, t0, std::min(t0 + kFrameBlock, L), f + (i - i0) * p.C * T_pad, e + (i - i0) * T_pad);
        for (int64_t i = i0; i < i1; ++i) softmax_context(order[i], b, L, e + (i - i0) * T_pad);
      }
    });
    if (out_of_memory.load()) throw std::bad_alloc();
  }
};

}  // namespace

void additive_step(const AdditiveStepParams& p) {
  if (p.dtype == DType::f32) {
    AdditiveKernel<float> kernel(p);
    kernel.run();
  } else {
    AdditiveKernel<double> kernel(p);
    kernel.run();
  }
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
