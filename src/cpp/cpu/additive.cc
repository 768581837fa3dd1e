// Fused ESPnet additive / location-aware attention step (AdditiveStepParams in params.h),
// compiled once per ISA; without gvec, AttDot's dot-product energies take the place of step 2
// (keys C-contiguous: one accumulator per frame, summed by a transpose; keys frames-inner, the
// [B, T, A] view of [B, A, T] storage that AttDot caches: tiles of rows x frames, no lane sums).
// Per task (a slice of rows of one utterance):
//   1. location features f[row][c][t] for the valid frames (cpu/location_conv.h), once per
//      group of rows with the same att_in (a search's siblings);
//   2. energies block by block of 12 frames, the rows of the slice inner, so each block of the
//      utterance's projection P (12 frames x A, copied once into an L1-resident, zero-padded
//      buffer) serves the whole beam: the pre-activations X = P + f proj^T + q + bias come out
//      of a register-tiled product (6 frames x 2 vectors of A) and go through the tanh and the
//      gvec dot product without leaving the registers (for a group of siblings, P + f proj^T
//      goes once through an L1 buffer and each row adds its query);
//   3. masked softmax with the scaling, and the context of up to 5 rows at once, so each
//      vector of the values feeds 5 rows (cpu/weighted_sum.h).
// With fewer slices than threads (one hypothesis), steps 1-2 run per range of frames on every
// thread, then step 3's context per range of columns: the same sums in the same order, so the
// same bits at any thread count.
// Register tiles hold 10-12 accumulators: an FMA has 4 cycles of latency and 2 pipes, and with
// 8 chains the loops ran at 60-75% of the FMA rate (the context 68 -> 54 us per AttDot step with
// 10, benchmarks/NOTES.md).
// Nothing of size [N, T, A] is materialised.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/arena.h"
#include "cpu/isa.h"
#include "cpu/location_conv.h"
#include "cpu/row_groups.h"
#include "cpu/vec.h"
#include "cpu/weighted_sum.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

constexpr int64_t kMaxRowsPerTask = 8;  // beam rows sharing each P block
constexpr int64_t kFrameBlock = 12;     // frames per P block (12 x 320 floats = 15 KiB)
constexpr int kTileFrames = 6;          // pre-activation register tile: 6 frames ...
constexpr int kAVecs = 2;               // ... x 2 vectors of A (12 accumulators)
constexpr int64_t kDotBlockA = 32;      // terms per partial sum of a frames-inner dot-product energy
constexpr int64_t kMinEnergiesToCut = 8192;  // frames x A of a call below which its frames are not cut
constexpr double kLog2e = 1.4426950408889634;

// gvec . tanh(x) summed over A, written as sum(g) - 2 sum(g / (2^y + 1)) with y = 2 log2(e) x:
// tanh(x) = 1 - 2 / (e^(2x) + 1), and the constant part sum(g) is added once per frame. The
// kernel works on y directly (P, q, bias and proj are scaled by 2 log2(e) on their way in, the
// products being linear), clamped where tanh is 1 to working precision (|x| = 9 in float32,
// 19.5 in float64); NaN passes through. g / (2^y + 1) is one true division, which absorbs the
// multiply by g: on Zen 3 it takes about two FMA-pipe slots (8 FMAs + 1 vdivps: 4.9 cycles
// where 8 FMAs take 3.9), an estimate plus a Newton step plus the multiply three.
constexpr double kTwoLog2e = 2 * kLog2e;
// q[j] = g[j] / (2^y[j] + 1) for J vectors, stage by stage, so the J independent ~50-cycle
// chains interleave in the instruction stream. One vector after the other ran at 8.4 cycles per
// vector where the ports allow ~4; stage by stage an AttLoc step went 530 -> 487 us (NOTES.md).
template <typename T, int J> inline void weighted_sigmoids(const Vec<T>* y, const Vec<T>* g, Vec<T>* q) {
  const T lim = sizeof(T) == 8 ? T(19.5 * kTwoLog2e) : T(9 * kTwoLog2e);
  Vec<T> f[J];
  for (int j = 0; j < J; ++j) f[j] = clamp<T>(y[j], -lim, lim);
  for (int j = 0; j < J; ++j) f[j] = exp2_small<T>(f[j]) + T(1);
  for (int j = 0; j < J; ++j) q[j] = g[j] / f[j];
}

template <typename T>
struct AdditiveKernel {
  static constexpr int W = lanes<T>();
  using V = Vec<T>;
  const AdditiveStepParams& p;
  const T *P, *values, *q, *att_in, *conv_w, *gvec;
  std::vector<T> proj_t;  // [C][A_pad]: proj transposed so that a is contiguous
  std::vector<T> gvec_pad, bias_pad;
  T gvec_sum = 0;
  int64_t A_pad, T_pad;
  LocationConv<T> conv{};
  // Per position i of `order`: the first position of its utterance whose row has the same att_in
  // (i itself if none); siblings: some row has an earlier twin (a search's siblings).
  std::vector<int64_t> first_alike;
  bool siblings = false;
  std::atomic<bool> out_of_memory{false};
  std::vector<int64_t> order;  // row indices grouped by utterance
  // A task: the rows order[i0..i1) (one utterance's) and the frames [t0, t1) of their energies.
  struct Task {
    int64_t i0, i1, t0, t1;
  };

  explicit AdditiveKernel(const AdditiveStepParams& params)
      : p(params),
        P(static_cast<const T*>(params.P)),
        values(static_cast<const T*>(params.values)),
        q(static_cast<const T*>(params.q)),
        att_in(static_cast<const T*>(params.att_in)),
        conv_w(static_cast<const T*>(params.conv_w)),
        gvec(static_cast<const T*>(params.gvec)) {
    // Whole register tiles of A (2 vectors); the pads are zero in every A-sized operand.
    A_pad = (p.A + kAVecs * W - 1) / (kAVecs * W) * (kAVecs * W);
    // Room past T for a whole conv tile started at any frame (a task's frames start on an energy
    // block, not on a conv tile) and for the last 6-frame tile of the energies.
    const int64_t overrun = std::max<int64_t>(kConvVecs * W, kTileFrames);
    T_pad = (p.T + overrun + W - 1) / W * W;
    conv = {conv_w, p.C, p.R, p.K, p.T, T_pad};
    // Zero-padded copies: the tail lanes past A then contribute gvec = 0 times anything = 0.
    gvec_pad.assign(A_pad, T(0));
    if (gvec) std::copy(gvec, gvec + p.A, gvec_pad.begin());
    for (int64_t a = 0; gvec && a < p.A; ++a) gvec_sum += gvec[a];
    bias_pad.assign(A_pad, T(0));
    if (params.loc_bias) {
      const T* loc_bias = static_cast<const T*>(params.loc_bias);
      std::copy(loc_bias, loc_bias + p.A, bias_pad.begin());
    }
    if (p.C > 0) {
      const T* proj = static_cast<const T*>(p.proj);
      proj_t.assign(p.C * A_pad, T(0));
      // c outer: contiguous stores (a outer stored with a stride of A_pad: ~1.7 us of a 9 us
      // T = 8 step, in 4K-aliasing store stalls).
      for (int64_t c = 0; c < p.C; ++c)
        for (int64_t a = 0; a < p.A; ++a) proj_t[c * A_pad + a] = T(kTwoLog2e) * proj[a * p.C + c];
    }
  }

  // f[c][t] for t in [t_begin, t_end) of row n into f (C x T_pad), up to a tile past t_end;
  // pad is scratch of R x conv.pad_width().
  void location_features(int64_t n, int64_t t_begin, int64_t t_end, T* f, T* pad) const {
    conv.pad_input(att_in + n * p.R * p.T, pad);
    conv.features(pad, t_begin, t_end, f);
  }

  // The first i in [i0, i) whose row's att_in is bit-for-bit row order[i]'s, or -1.
  int64_t same_att_in_before(int64_t i0, int64_t i) const {
    const std::size_t bytes = std::size_t(p.R * p.T) * sizeof(T);
    const T* mine = att_in + order[i] * p.R * p.T;
    for (int64_t j = i0; j < i; ++j)
      if (std::memcmp(att_in + order[j] * p.R * p.T, mine, bytes) == 0) return j;
    return -1;
  }

  // The tile of frames k0 .. k0 + 6 x the 2 vectors of A at a, in registers (acc[k][v]): P +
  // qb + f proj^T with qb given, else P + f proj^T (Pblk: the block's rows of P; fk0: the row's
  // location features from frame t0 + k0).
  void project_tile(const T* Pblk, int k0, int64_t a, const T* fk0, const T* qb,
                    V (&acc)[kTileFrames][kAVecs]) const {
    if (qb) {
      const V q0 = load(qb + a), q1 = load(qb + a + W);
      for (int k = 0; k < kTileFrames; ++k) {
        acc[k][0] = load(Pblk + (k0 + k) * A_pad + a) + q0;
        acc[k][1] = load(Pblk + (k0 + k) * A_pad + a + W) + q1;
      }
    } else {
      for (int k = 0; k < kTileFrames; ++k) {
        acc[k][0] = load(Pblk + (k0 + k) * A_pad + a);
        acc[k][1] = load(Pblk + (k0 + k) * A_pad + a + W);
      }
    }
    const T* pc = proj_t.data() + a;
    for (int64_t c = 0; c < p.C; ++c, pc += A_pad) {
      const V p0 = load(pc), p1 = load(pc + W);
      const T* fc = fk0 + c * T_pad;
      for (int k = 0; k < kTileFrames; ++k) {
        const V fk = splat<T>(fc[k]);
        acc[k][0] += fk * p0;
        acc[k][1] += fk * p1;
      }
    }
  }

  // s[k] += the tile's g / (2^y + 1) summed over its 2 vectors of A at a, y[v * 6 + k] the
  // pre-activations of frame k (query included): the 12 vectors through the tanh at once.
  void add_sigmoids(const V* y, int64_t a, V* s) const {
    V gv[kAVecs * kTileFrames], qv[kAVecs * kTileFrames];
    for (int v = 0; v < kAVecs; ++v)
      for (int k = 0; k < kTileFrames; ++k) gv[v * kTileFrames + k] = load(gvec_pad.data() + a + v * W);
    weighted_sigmoids<T, kAVecs * kTileFrames>(y, gv, qv);
    for (int k = 0; k < kTileFrames; ++k) {
      V sum = qv[k];
      for (int v = 1; v < kAVecs; ++v) sum += qv[v * kTileFrames + k];
      s[k] += sum;
    }
  }

  // e[t0 + k] for k < nf (the frames of one block), row n: gvec . tanh(X[k]) with
  // y = 2 log2(e) X[k], X[k] = P[k] + q[n] + bias + sum_c f[c][t0 + k] proj[:, c], from Pblk (the
  // block's rows of P) and qb = q[n] + bias, both zero-padded to A_pad. Register tiles of 6 frames
  // x 2 vectors of A: the tile's pre-activations go through the tanh straight from the registers.
  // Frames past nf are computed on zero rows and dropped. QLast: the sum taken as
  // (P + f proj^T) + qb, as energies_shared takes it for siblings; else qb goes in with P, which
  // is 5% faster (12 loads fold into the adds: AttLoc N = 10, T = 200, 1 thread 421 vs 444 us).
  template <bool QLast>
  __attribute__((noinline)) void energies(const T* Pblk, const T* qb, int64_t t0, int nf, const T* f, T* e) const {
    for (int k0 = 0; k0 < nf; k0 += kTileFrames) {
      V s[kTileFrames] = {};
      const T* fk0 = f + t0 + k0;  // f is padded: a whole tile of frames readable past nf
      for (int64_t a = 0; a < A_pad; a += kAVecs * W) {
        V acc[kTileFrames][kAVecs];
        project_tile(Pblk, k0, a, fk0, QLast ? nullptr : qb, acc);
        V y[kAVecs * kTileFrames];
        if (QLast) {
          const V q0 = load(qb + a), q1 = load(qb + a + W);
          for (int k = 0; k < kTileFrames; ++k) {
            y[k] = acc[k][0] + q0;
            y[kTileFrames + k] = acc[k][1] + q1;
          }
        } else {
          for (int k = 0; k < kTileFrames; ++k) {
            y[k] = acc[k][0];
            y[kTileFrames + k] = acc[k][1];
          }
        }
        add_sigmoids(y, a, s);
      }
      for (int k = 0; k < kTileFrames && k0 + k < nf; ++k) e[t0 + k0 + k] = gvec_sum - T(2) * hsum<T>(s[k]);
    }
  }

  // energies<true>() for g rows that share their location features f (a search's siblings), row
  // r's query qbs[r] and energies es[r]: each tile's Y = P + f proj^T goes once to ybuf (6 x
  // A_pad, L1), then every row's tanh pass reads it and adds its query. The projection, ~13 us of
  // a recipe-sized row's ~40 (1 thread), runs once per group.
  __attribute__((noinline)) void energies_shared(const T* Pblk, const T* const* qbs, int g, int64_t t0, int nf,
                                                 const T* f, T* const* es, T* ybuf) const {
    for (int k0 = 0; k0 < nf; k0 += kTileFrames) {
      const T* fk0 = f + t0 + k0;
      for (int64_t a = 0; a < A_pad; a += kAVecs * W) {
        V acc[kTileFrames][kAVecs];
        project_tile(Pblk, k0, a, fk0, nullptr, acc);
        for (int k = 0; k < kTileFrames; ++k)
          for (int v = 0; v < kAVecs; ++v) store(ybuf + k * A_pad + a + v * W, acc[k][v]);
      }
      for (int r = 0; r < g; ++r) {
        V s[kTileFrames] = {};
        for (int64_t a = 0; a < A_pad; a += kAVecs * W) {
          V y[kAVecs * kTileFrames];
          for (int v = 0; v < kAVecs; ++v) {
            const V qv = load(qbs[r] + a + v * W);
            for (int k = 0; k < kTileFrames; ++k) y[v * kTileFrames + k] = load(ybuf + k * A_pad + a + v * W) + qv;
          }
          add_sigmoids(y, a, s);
        }
        for (int k = 0; k < kTileFrames && k0 + k < nf; ++k) es[r][t0 + k0 + k] = gvec_sum - T(2) * hsum<T>(s[k]);
      }
    }
  }

  // Dot-product energies (no gvec): e[t0 + j] = P[b, t0 + j] . q[n] for j < nf <= W, one
  // accumulator per frame over A, summed together by sum_each (no horizontal sums). Not inlined
  // into the task loop: there the 8 row pointers were spilled and reloaded every iteration.
  __attribute__((noinline)) void energies_dot(int64_t b, const T* qn, int64_t t0, int nf, T* e) const {
    const T* rowp[W];
    for (int j = 0; j < W; ++j) rowp[j] = P + (b * p.T + t0 + std::min(j, nf - 1)) * p.A;
    V acc[W] = {};
    const int64_t afull = p.A / W * W;
    for (int64_t a = 0; a < afull; a += W) {
      const V qv = load(qn + a);
      for (int j = 0; j < W; ++j) acc[j] += load(rowp[j] + a) * qv;
    }
    if (const int tail = int(p.A - afull)) {
      const V qv = load_partial(qn + afull, tail);
      for (int j = 0; j < W; ++j) acc[j] += load_partial(rowp[j] + afull, tail) * qv;
    }
    const V sum = sum_each<T>(acc);
    for (int j = 0; j < nf; ++j) e[t0 + j] = sum[j];
  }

  // Dot-product energies from keys stored [B][A][T] (P_frames_inner): es[r][t] = q[ns[r]] .
  // P[b, :, t] for t in [t_begin, t_end), R rows at once in tiles of R rows x NV vectors of
  // frames: each key vector feeds R FMAs, and nothing is summed across lanes. The sum over a runs
  // in blocks of kDotBlockA, each block's partial added to the total in es: one chain of all A
  // terms in float32 missed the float64 reference by 3.5e-5 on a recipe-sized context, where 8
  // lanes of 40 terms (energies_dot) stayed inside 1e-5. Every energy is summed in the same order
  // whatever its tile (or thread count).
  template <int R>
  void energies_dot_frames(const int64_t* ns, int64_t b, int64_t t_begin, int64_t t_end, T* const* es) const {
    constexpr int NV = R >= 4 ? 2 : (R == 3 ? 3 : 8 / R);
    const T* Pb = P + b * p.P_batch_stride;
    const T* qr[R];
    for (int r = 0; r < R; ++r) qr[r] = q + ns[r] * p.A;
    int64_t t = t_begin;
    for (; t + NV * W <= t_end; t += NV * W)
      for (int64_t a0 = 0; a0 < p.A; a0 += kDotBlockA) {
        V acc[R][NV] = {};
        const T* pa = Pb + a0 * p.T + t;
        for (int64_t a = a0; a < std::min(p.A, a0 + kDotBlockA); ++a, pa += p.T) {
          V pv[NV];
          for (int v = 0; v < NV; ++v) pv[v] = load(pa + v * W);
          for (int r = 0; r < R; ++r) {
            const V qs = splat<T>(qr[r][a]);
            for (int v = 0; v < NV; ++v) acc[r][v] += qs * pv[v];
          }
        }
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) store(es[r] + t + v * W, a0 ? load(es[r] + t + v * W) + acc[r][v] : acc[r][v]);
      }
    for (; t < t_end; t += W) {
      const int width = int(std::min<int64_t>(W, t_end - t));
      for (int64_t a0 = 0; a0 < p.A; a0 += kDotBlockA) {
        V acc[R] = {};
        const T* pa = Pb + a0 * p.T + t;
        for (int64_t a = a0; a < std::min(p.A, a0 + kDotBlockA); ++a, pa += p.T) {
          const V pv = width == W ? load(pa) : load_partial(pa, width);
          for (int r = 0; r < R; ++r) acc[r] += splat<T>(qr[r][a]) * pv;
        }
        for (int r = 0; r < R; ++r)
          store_partial(es[r] + t, a0 ? load_partial(es[r] + t, width) + acc[r] : acc[r], width);
      }
    }
  }

  // energies_dot_frames for the rows ns[0..cnt) of utterance b, row i's energies at e + i * T_pad.
  __attribute__((noinline)) void energies_dot_rows(const int64_t* ns, int64_t cnt, int64_t b, int64_t t_begin,
                                                   int64_t t_end, T* e) const {
    static_assert(kCtxRows == 5, "energies_dot_rows dispatches tiles of 1 to 5 rows");
    for (int64_t i = 0; i < cnt; i += kCtxRows) {
      T* es[kCtxRows];
      const int m = int(std::min<int64_t>(kCtxRows, cnt - i));
      for (int r = 0; r < m; ++r) es[r] = e + (i + r) * T_pad;
      switch (m) {
        case 1: energies_dot_frames<1>(ns + i, b, t_begin, t_end, es); break;
        case 2: energies_dot_frames<2>(ns + i, b, t_begin, t_end, es); break;
        case 3: energies_dot_frames<3>(ns + i, b, t_begin, t_end, es); break;
        case 4: energies_dot_frames<4>(ns + i, b, t_begin, t_end, es); break;
        default: energies_dot_frames<5>(ns + i, b, t_begin, t_end, es); break;
      }
    }
  }

  // The block's rows of P times 2 log2(e), zero-padded to [kFrameBlock][A_pad].
  void copy_block(int64_t b, int64_t t0, int nf, T* Pblk) const {
    for (int k = 0; k < kFrameBlock; ++k) {
      T* dst = Pblk + k * A_pad;
      const int64_t filled = k < nf ? p.A : 0;
      const T* src = P + (b * p.T + t0 + k) * p.A;
      for (int64_t a = 0; a < filled; ++a) dst[a] = T(kTwoLog2e) * src[a];
      std::fill(dst + filled, dst + A_pad, T(0));
    }
  }

  // w = softmax(scaling * e) over t < L into the row's output weights, zeros to T.
  __attribute__((noinline)) void softmax(int64_t n, int64_t L, const T* e) const {
    T* w = static_cast<T*>(p.weights) + n * p.T;
    const T s2 = T(p.scaling * kLog2e);
    T m = -std::numeric_limits<T>::infinity();
    {
      // Vector max, then the tail: a scalar running max went through the stack (a
      // store-forwarding chain, ~6 cycles per frame).
      V mv = splat<T>(m);
      int64_t t = 0;
      for (; t + W <= L; t += W) mv = vmax<T>(mv, load(e + t));
      m = hmax<T>(mv);
      for (; t < L; ++t) m = std::max(m, e[t]);
    }
    T sum = 0;
    int64_t t = 0;
    for (; t + W <= L; t += W) {
      const V x = exp2v<T>((load(e + t) - m) * s2);
      store(w + t, x);
      sum += hsum<T>(x);
    }
    for (; t < L; ++t) {
      w[t] = exp2v<T>(splat<T>((e[t] - m) * s2))[0];
      sum += w[t];
    }
    const T inv = T(1) / sum;
    for (t = 0; t < L; ++t) w[t] *= inv;
    std::fill(w + L, w + p.T, T(0));
  }

  // The context of rows ns[0..cnt) of utterance b over frames [0, L), columns [e_begin, e_end).
  void context(const int64_t* ns, int64_t cnt, int64_t b, int64_t L, int64_t e_begin, int64_t e_end) const {
    const WeightedSum<T> sum{static_cast<const T*>(p.weights), values, static_cast<T*>(p.context), p.T, p.Ev};
    sum(ns, cnt, b, L, e_begin, e_end);
  }

  // Energies of the task's rows over its frames, row order[i] into e + (i - task.i0) * T_pad.
  void scores(const Task& task, T* f, T* pad, T* Pblk, T* qb, T* ybuf, T* e) const {
    const auto [i0, i1, t_begin, t_end] = task;
    const int64_t b = p.rows[order[i0]];
    if (!gvec && p.P_frames_inner) {
      energies_dot_rows(order.data() + i0, i1 - i0, b, t_begin, t_end, e);
      return;
    }
    if (!gvec) {
      // Frames outer, rows inner: each block of W frames of P serves the whole slice from L1.
      for (int64_t t0 = t_begin; t0 < t_end; t0 += W)
        for (int64_t i = i0; i < i1; ++i)
          energies_dot(b, q + order[i] * p.A, t0, int(std::min<int64_t>(W, t_end - t0)), e + (i - i0) * T_pad);
      return;
    }
    // A beam search hands every child its parent's weights, so siblings share att_in: a row whose
    // att_in equals (bit for bit) an earlier row's of the slice copies its location features, the
    // same numbers. When the call has siblings (run() sets `siblings`), they also form a group
    // whose projection runs once (energies_shared), and every row of the call takes its sums in
    // the group's order, so a row's numbers do not depend on how the rows fall into slices (the
    // thread count). leader[i - i0]: the first position of i's group in the slice.
    int64_t leader[kMaxRowsPerTask];
    for (int64_t i = i0; i < i1; ++i) {
      int64_t j = i0;
      while (first_alike[j] != first_alike[i]) ++j;
      leader[i - i0] = j;
      T* fi = f + (i - i0) * p.C * T_pad;
      if (j < i)
        std::copy(f + (j - i0) * p.C * T_pad, f + (j - i0 + 1) * p.C * T_pad, fi);
      else if (p.C > 0)
        location_features(order[i], t_begin, t_end, fi, pad);
    }
    for (int64_t i = i0; i < i1; ++i) {
      const T* qn = q + order[i] * p.A;
      T* qbi = qb + (i - i0) * A_pad;
      for (int64_t a = 0; a < A_pad; ++a) qbi[a] = a < p.A ? T(kTwoLog2e) * (qn[a] + bias_pad[a]) : T(0);
    }
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kFrameBlock) {
      const int nf = int(std::min(kFrameBlock, t_end - t0));
      copy_block(b, t0, nf, Pblk);
      for (int64_t i = i0; i < i1; ++i) {
        const T* fi = f + (i - i0) * p.C * T_pad;
        const T* qbi = qb + (i - i0) * A_pad;
        T* ei = e + (i - i0) * T_pad;
        if (!siblings) {
          energies<false>(Pblk, qbi, t0, nf, fi, ei);
          continue;
        }
        if (leader[i - i0] != i) continue;
        const T* qbs[kMaxRowsPerTask];
        T* es[kMaxRowsPerTask];
        int g = 0;
        for (int64_t j = i; j < i1; ++j)
          if (leader[j - i0] == i) {
            qbs[g] = qb + (j - i0) * A_pad;
            es[g++] = e + (j - i0) * T_pad;
          }
        if (g == 1)
          energies<true>(Pblk, qbi, t0, nf, fi, ei);
        else
          energies_shared(Pblk, qbs, g, t0, nf, fi, es, ybuf);
      }
    }
  }

  void run() {
    // Group rows by utterance (stable), then cut each group into slices of kMaxRowsPerTask.
    RowGroups groups(p.rows, p.N, p.B);
    order = std::move(groups.order);
    const std::vector<int64_t>& start = groups.start;
    // Siblings anywhere in the call, whichever slices they fall into (scores()).
    first_alike.resize(p.N);
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t i = start[b]; i < start[b + 1]; ++i) {
        const int64_t j = p.C > 0 ? same_att_in_before(start[b], i) : -1;
        first_alike[i] = j >= 0 ? j : i;
        siblings = siblings || j >= 0;
      }
    // Slices of at most kMaxRowsPerTask rows, evened out so that one utterance's beam splits
    // into equal parts across the threads (10 rows on 2 threads: 5 + 5, not 4 + 4 + 2).
    const int64_t threads = num_threads();
    std::vector<Task> slices;
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t g = start[b + 1] - start[b];
      if (g == 0) continue;
      const int64_t n_slices = std::max((g + kMaxRowsPerTask - 1) / kMaxRowsPerTask, std::min(g, p.B == 1 ? threads : 1));
      for (int64_t s = 0; s < n_slices; ++s)
        slices.push_back({start[b] + s * g / n_slices, start[b] + (s + 1) * g / n_slices, 0, p.lengths[b]});
    }

    if (slices.empty()) return;  // N = 0: nothing to compute

    ScratchLayout lay;
    const int64_t pad_width = conv.pad_width();
    const std::size_t off_f = lay.add<T>(kMaxRowsPerTask * std::max<int64_t>(p.C, 1) * T_pad);
    const std::size_t off_pad = lay.add<T>(std::max<int64_t>(p.R, 1) * pad_width);
    const std::size_t off_e = lay.add<T>(kMaxRowsPerTask * T_pad);
    const std::size_t off_pblk = lay.add<T>(kFrameBlock * A_pad);
    const std::size_t off_qb = lay.add<T>(kMaxRowsPerTask * A_pad);
    const std::size_t off_ybuf = lay.add<T>(kTileFrames * A_pad);
    const std::size_t bytes = lay.bytes();
    auto task_scores = [&](const Task& task, void* base, T* e) {
      scores(task, at<T>(base, off_f), at<T>(base, off_pad), at<T>(base, off_pblk), at<T>(base, off_qb),
             at<T>(base, off_ybuf), e);
    };

    // Fewer slices than threads (one row, or a few rows of few utterances): the frames are cut
    // too, in whole energy blocks, and the context in a second pass over columns of E; unless
    // the energies are too few to pay for the second pass and fork (one row, 2 threads, kernel
    // alone: A = 320, T = 25 10.6 us whole, 20.4 us cut; A = 128, T = 50 8.6 vs 11.0 us; A =
    // 128, T = 75 17.7 vs 14.1 us).
    int64_t energies = 0;
    for (const Task& sl : slices) energies += (sl.i1 - sl.i0) * sl.t1 * A_pad;
    const int64_t parts =
        energies < kMinEnergiesToCut ? 1 : (threads + int64_t(slices.size()) - 1) / int64_t(slices.size());
    if (parts == 1) {
      parallel_for(int64_t(slices.size()), [&](int64_t, int64_t begin, int64_t end) {
        void* base = thread_scratch(bytes);
        if (!base) {
          out_of_memory.store(true);
          return;
        }
        T* e = at<T>(base, off_e);
        for (int64_t k = begin; k < end; ++k) {
          const Task& task = slices[k];
          const int64_t b = p.rows[order[task.i0]];
          task_scores(task, base, e);
          for (int64_t i = task.i0; i < task.i1; ++i) softmax(order[i], task.t1, e + (i - task.i0) * T_pad);
          context(order.data() + task.i0, task.i1 - task.i0, b, task.t1, 0, p.Ev);
        }
      });
      if (out_of_memory.load()) throw std::bad_alloc();
      return;
    }

    std::vector<Task> tasks;
    for (const Task& sl : slices) {
      const int64_t blocks = (sl.t1 + kFrameBlock - 1) / kFrameBlock, n = std::min(parts, blocks);
      for (int64_t k = 0; k < n; ++k)
        tasks.push_back({sl.i0, sl.i1, k * blocks / n * kFrameBlock, std::min(sl.t1, (k + 1) * blocks / n * kFrameBlock)});
    }
    std::vector<T> e_all(p.N * T_pad);  // row order[i]'s energies at e_all + i * T_pad
    parallel_for(int64_t(tasks.size()), [&](int64_t, int64_t begin, int64_t end) {
      void* base = thread_scratch(bytes);
      if (!base) {
        out_of_memory.store(true);
        return;
      }
      for (int64_t k = begin; k < end; ++k) task_scores(tasks[k], base, e_all.data() + tasks[k].i0 * T_pad);
    });
    if (out_of_memory.load()) throw std::bad_alloc();
    for (int64_t i = 0; i < p.N; ++i) softmax(order[i], p.lengths[p.rows[order[i]]], e_all.data() + i * T_pad);
    // Columns of E in whole vectors, parts per slice.
    const int64_t e_vecs = (p.Ev + W - 1) / W;
    const int64_t e_parts = std::max<int64_t>(1, std::min(parts, e_vecs));
    parallel_for(int64_t(slices.size()) * e_parts, [&](int64_t, int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const Task& sl = slices[k / e_parts];
        const int64_t part = k % e_parts;
        const int64_t e0 = part * e_vecs / e_parts * W, e1 = std::min(p.Ev, (part + 1) * e_vecs / e_parts * W);
        context(order.data() + sl.i0, sl.i1 - sl.i0, p.rows[order[sl.i0]], sl.t1, e0, e1);
      }
    });
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
