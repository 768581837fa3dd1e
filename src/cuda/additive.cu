// The fused step of ESPnet's additive attention family on NVIDIA GPUs (AttAdd, AttLoc, AttCov,
// AttCovLoc; not the dot-product energies of the CPU kernel, whose query needs a bias and a
// tanh that the query launch here does not apply): the math of
// attnkit.espnet._kernels.fused_additive_step_reference in three launches on the caller's stream.
//
// 0. Query. q[n][a] = dec_z[n] . W_dec[a], a warp per output (lanes over Dz, coalesced), into
//    the query scratch the next launch reads.
// 1. Energies. Block (frame tile, row n) of 8 warps takes 8 frames of row n. Its warps first
//    compute the tile's location features f[k][c] into shared memory (one (frame, channel) pair
//    per warp at a time, the lanes splitting the taps that reach inside [0, T)), then one frame
//    each: lanes over A, x = P[b,t,a] + q[n,a] + f[t,:] proj[a,:] + bias[a], and the warp sums
//    g[a] tanh(x[a]). The scaled energy goes to scratch[n][t].
// 2. Softmax and context. Block (column tile, row n) reduces the max and the sum of row n's valid
//    energies (every column tile of a row repeats this: a few hundred frames), then walks the
//    frames in chunks whose probabilities it stages in shared memory; each thread owns one
//    column of the context. Column tile 0 also writes the weights, zeros past the row's length,
//    and the row's peak (the argmax of its weights, as NumPy's: the first of the largest, a NaN
//    before any number), so a step needs no argmax call after it.
//
// The host side is one binding call that launches all three on the caller's stream.
//
// Precision: the step's own dtype throughout (float32 or float64, like the CPU kernel), libm's
// tanh and exp. Written for correctness first; it has not run on a GPU yet (NOTES.md).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "cuda/check.h"

namespace attnkit::cuda {
namespace {

constexpr const char* kOp = "additive attention step";
constexpr int kQueryWarps = 8;             // query: one output per warp
constexpr int kEnergyWarps = 8;            // energies: one frame per warp ...
constexpr int kTileFrames = kEnergyWarps;  // ... 8 frames per block
constexpr int kContextThreads = 128;       // softmax / context: one context column per thread
constexpr int kChunkFrames = 256;          // probabilities staged per round
constexpr int kMaxChannels = 1024;         // location features of a tile: 8 x C in shared memory
constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ float tanh_of(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_of(double x) { return tanh(x); }
__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
// fmax drops a NaN operand, so a NaN energy does not become the row's maximum; it reaches every
// weight of its row through the sum, as on the CPU.
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }

template <typename T> __device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullWarp, x, offset);
  return x;
}
template <typename T> __device__ __forceinline__ T warp_max(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = max_of(x, __shfl_xor_sync(kFullWarp, x, offset));
  return x;
}

// The utterance of row n and its valid frames, clamped to the arrays' ranges (the host checked
// them; the clamp keeps a bad value from reading out of bounds).
struct RowView {
  int64_t b, length;
};
__device__ __forceinline__ RowView row_view(const AdditiveStepParams& p, int64_t n) {
  int64_t b = p.rows[n];
  b = b < 0 ? 0 : (b >= p.B ? p.B - 1 : b);
  int64_t length = p.lengths[b];
  length = length < 1 ? 1 : (length > p.T ? p.T : length);
  return {b, length};
}

template <typename T> __global__ void query_kernel(AdditiveStepParams p) {
  const int64_t n = blockIdx.y;
  const int64_t a = int64_t(blockIdx.x) * kQueryWarps + int(threadIdx.x) / 32;
  const int lane = int(threadIdx.x) % 32;
  if (a >= p.A) return;  // the same for the whole warp
  const T* z = static_cast<const T*>(p.dec_z) + n * p.Dz;
  const T* w = static_cast<const T*>(p.w_dec) + a * p.Dz;
  T acc = 0;
  for (int64_t k = lane; k < p.Dz; k += 32) acc += z[k] * w[k];
  acc = warp_sum(acc);
  if (lane == 0) static_cast<T*>(p.query)[n * p.A + a] = acc;
}

template <typename T> __global__ void energies_kernel(AdditiveStepParams p) {
  extern __shared__ double2 shared_raw[];  // 16-byte aligned, for float and double alike
  T* feat = reinterpret_cast<T*>(shared_raw);  // [kTileFrames][C]
  const int64_t n = blockIdx.y;
  const RowView row = row_view(p, n);
  const int64_t t0 = int64_t(blockIdx.x) * kTileFrames;
  if (t0 >= row.length) return;  // the same for the whole block: the tile lies in the padding
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;

  if (p.C > 0) {
    // f[k][c] = sum_r sum_j conv_w[c][r][j] * att_in[n][r][t0 + k + j - F], att_in 0 outside [0, T).
    const T* att = static_cast<const T*>(p.att_in) + n * p.R * p.T;
    const T* conv_w = static_cast<const T*>(p.conv_w);
    const int64_t F = (p.K - 1) / 2;
    for (int64_t pair = warp; pair < kTileFrames * p.C; pair += kEnergyWarps) {
      const int64_t k = pair / p.C, c = pair - k * p.C;
      const int64_t t = t0 + k;
      T acc = 0;
      if (t < row.length) {
        const int64_t j_lo = F - t > 0 ? F - t : 0;                       // taps with t + j - F >= 0
        const int64_t j_hi = p.T + F - t < p.K ? p.T + F - t : p.K;       // ... and < T
        for (int64_t r = 0; r < p.R; ++r) {
          const T* w = conv_w + (c * p.R + r) * p.K;
          const T* a = att + r * p.T + t - F;
          for (int64_t j = j_lo + lane; j < j_hi; j += 32) acc += w[j] * a[j];
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) feat[k * p.C + c] = acc;
    }
    __syncthreads();
  }

  const int64_t t = t0 + warp;
  if (t >= row.length) return;  // no barrier below
  const T* P = static_cast<const T*>(p.P) + (row.b * p.T + t) * p.A;
  const T* q = static_cast<const T*>(p.q) + n * p.A;
  const T* gvec = static_cast<const T*>(p.gvec);
  const T* proj = static_cast<const T*>(p.proj);
  const T* loc_bias = static_cast<const T*>(p.loc_bias);
  const T* f = feat + warp * p.C;
  T e = 0;
  for (int64_t a = lane; a < p.A; a += 32) {
    T x = P[a] + q[a];
    if (p.C > 0) {
      const T* pa = proj + a * p.C;
      T loc = loc_bias ? loc_bias[a] : T(0);
      for (int64_t c = 0; c < p.C; ++c) loc += f[c] * pa[c];
      x += loc;
    }
    e += gvec[a] * tanh_of(x);
  }
  e = warp_sum(e);
  if (lane == 0) static_cast<T*>(p.scratch)[n * p.T + t] = e * T(p.scaling);
}

// The block's reduction of one value per thread (kContextThreads threads); every thread gets it.
template <typename T, bool kMax> __device__ T block_reduce(T x, T* partial) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  x = kMax ? warp_max(x) : warp_sum(x);
  __syncthreads();  // partial may still be read by a previous reduction
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = partial[0];
  for (int w = 1; w < kContextThreads / 32; ++w) x = kMax ? max_of(x, partial[w]) : x + partial[w];
  return x;
}

// Whether weight x at frame i comes before y at frame j in NumPy's argmax order.
template <typename T> __device__ __forceinline__ bool peak_before(T x, int64_t i, T y, int64_t j) {
  const bool x_nan = x != x, y_nan = y != y;
  if (x_nan || y_nan) return x_nan && (!y_nan || i < j);
  return x > y || (x == y && i < j);
}

// The block's peak of one (weight, frame) per thread (kContextThreads threads), for thread 0.
template <typename T> __device__ int64_t block_peak(T x, int64_t i, T* partial_x, int64_t* partial_i) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const T y = __shfl_xor_sync(kFullWarp, x, offset);
    const int64_t j = __shfl_xor_sync(kFullWarp, i, offset);
    if (peak_before(y, j, x, i)) x = y, i = j;
  }
  __syncthreads();
  if (lane == 0) partial_x[warp] = x, partial_i[warp] = i;
  __syncthreads();
  for (int w = 1; w < kContextThreads / 32; ++w)
    if (peak_before(partial_x[w], partial_i[w], x, i)) x = partial_x[w], i = partial_i[w];
  return i;
}

template <typename T> __global__ void softmax_context_kernel(AdditiveStepParams p) {
  __shared__ T probs[kChunkFrames];
  __shared__ T partial[kContextThreads / 32];
  __shared__ int64_t partial_frames[kContextThreads / 32];
  const int64_t n = blockIdx.y;
  const RowView row = row_view(p, n);
  const T* e = static_cast<const T*>(p.scratch) + n * p.T;
  const int tid = int(threadIdx.x);
  const bool writes_weights = blockIdx.x == 0;
  T* weights = static_cast<T*>(p.weights) + n * p.T;

  T m = -INFINITY;
  for (int64_t t = tid; t < row.length; t += kContextThreads) m = max_of(m, e[t]);
  m = block_reduce<T, true>(m, partial);
  if (m == T(-INFINITY)) m = 0;  // every energy NaN (or -inf): the sum below carries it
  T s = 0;
  for (int64_t t = tid; t < row.length; t += kContextThreads) s += exp_of(e[t] - m);
  const T inv_sum = T(1) / block_reduce<T, false>(s, partial);

  const int64_t col = int64_t(blockIdx.x) * kContextThreads + tid;
  const T* values = col < p.Ev ? static_cast<const T*>(p.values) + row.b * p.T * p.Ev + col : nullptr;
  T acc = 0;
  T best = -INFINITY;  // this thread's peak candidate: weight, frame
  int64_t best_frame = p.T;
  for (int64_t c0 = 0; c0 < row.length; c0 += kChunkFrames) {
    const int64_t c1 = c0 + kChunkFrames < row.length ? c0 + kChunkFrames : row.length;
    __syncthreads();  // the previous chunk's probabilities have been used
    for (int64_t t = c0 + tid; t < c1; t += kContextThreads) {
      const T w = exp_of(e[t] - m) * inv_sum;
      probs[t - c0] = w;
      if (writes_weights) weights[t] = w;
      if (peak_before(w, t, best, best_frame)) best = w, best_frame = t;
    }
    __syncthreads();
    if (col < p.Ev)
      for (int64_t t = c0; t < c1; ++t) acc += probs[t - c0] * values[t * p.Ev];
  }
  if (col < p.Ev) static_cast<T*>(p.context)[n * p.Ev + col] = acc;
  if (!writes_weights) return;  // the same for the whole block
  for (int64_t t = row.length + tid; t < p.T; t += kContextThreads) weights[t] = 0;
  // The padded frames' zeros never come first: the valid weights sum to 1 (or hold a NaN).
  const int64_t peak = block_peak(best, best_frame, partial, partial_frames);
  if (tid == 0) p.peak[n] = peak;
}

template <typename T> void launch(const AdditiveStepParams& p, cudaStream_t stream) {
  clear_stale_error();
  const dim3 query_grid(unsigned((p.A + kQueryWarps - 1) / kQueryWarps), unsigned(p.N));
  query_kernel<T><<<query_grid, kQueryWarps * 32, 0, stream>>>(p);
  check(cudaGetLastError(), "additive attention step: query kernel launch");
  const dim3 energy_grid(unsigned((p.T + kTileFrames - 1) / kTileFrames), unsigned(p.N));
  const size_t feat_bytes = sizeof(T) * size_t(kTileFrames * p.C);
  auto energies = energies_kernel<T>;
  allow_dynamic_shared(energies, feat_bytes, "additive attention step");
  energies<<<energy_grid, kEnergyWarps * 32, feat_bytes, stream>>>(p);
  check(cudaGetLastError(), "additive attention step: energies kernel launch");
  const int64_t column_tiles = p.Ev > 0 ? (p.Ev + kContextThreads - 1) / kContextThreads : 1;
  const dim3 context_grid(unsigned(column_tiles), unsigned(p.N));
  softmax_context_kernel<T><<<context_grid, kContextThreads, 0, stream>>>(p);
  check(cudaGetLastError(), "additive attention step: softmax/context kernel launch");
}

[[noreturn]] void fail(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }

}  // namespace

void additive_step(const AdditiveStepParams& p, const Launch& at) {
  if (p.B < 1 || p.T < 1 || p.A < 1 || p.N < 0)
    fail("B, T and A must be >= 1 and N >= 0, got B=" + std::to_string(p.B) + " T=" + std::to_string(p.T) +
         " A=" + std::to_string(p.A) + " N=" + std::to_string(p.N));
  if (p.Ev < 0) fail("Ev must be >= 0, got " + std::to_string(p.Ev));
  if (!(std::isfinite(p.scaling) && p.scaling > 0))
    fail("scaling must be a finite number > 0, got " + std::to_string(p.scaling));
  if (!p.P || !p.lengths || !p.rows || !p.dec_z || !p.w_dec || !p.query || !p.weights || !p.peak || !p.scratch ||
      (p.Ev > 0 && (!p.values || !p.context)))
    fail("P, lengths, rows, dec_z, w_dec, the outputs and the scratch must all be given");
  if (p.q != p.query) fail("on the GPU q is computed into the query scratch (p.q must be p.query)");
  if (p.Dz < 1) fail("Dz must be >= 1, got " + std::to_string(p.Dz));
  if (p.P_frames_inner) fail("on the GPU P must be [B, T, A] C-contiguous");
  if (!p.gvec)
    throw UnsupportedError(std::string(kOp) + ": dot-product energies (gvec_w None) run on the CPU only: the "
                           "GPU query has no bias and no tanh");
  if (p.C > 0) {
    if (!p.att_in || !p.conv_w || !p.proj) fail("a location term needs att_in, conv_w and conv_proj");
    if (p.K % 2 == 0) fail("the location kernel width must be odd (2F+1), got " + std::to_string(p.K));
    if (p.R < 1) fail("att_in must have at least one row, got R=" + std::to_string(p.R));
    if (p.C > kMaxChannels)
      throw UnsupportedError(std::string(kOp) + ": on the GPU the location conv takes at most " +
                             std::to_string(kMaxChannels) + " channels, got " + std::to_string(p.C));
  }
  if (p.N > 65535)
    throw UnsupportedError(std::string(kOp) + ": on the GPU a step takes at most 65535 rows, got " +
                           std::to_string(p.N));
  if ((p.T + kTileFrames - 1) / kTileFrames > 0x7fffffffLL || (p.Ev + kContextThreads - 1) / kContextThreads > 0x7fffffffLL ||
      (p.A + kQueryWarps - 1) / kQueryWarps > 0x7fffffffLL)
    throw UnsupportedError(std::string(kOp) + ": T, A or Ev too large for one launch on the GPU");
  if (p.N == 0) return;  // no rows: nothing to launch (as on the CPU)
  DeviceGuard on(at.device, kOp);
  const auto stream = reinterpret_cast<cudaStream_t>(at.stream);
  switch (p.dtype) {
    case DType::f32: return launch<float>(p, stream);
    case DType::f64: return launch<double>(p, stream);
    default:
      throw TypeError(std::string(kOp) + ": on the GPU the step must be float32 or float64, got " + dtype_name(p.dtype));
  }
}

}  // namespace attnkit::cuda
