// Scaled dot-product attention on NVIDIA GPUs: one pass over the keys with an online softmax,
// on CUDA cores, float32 scores, sums and accumulators whatever the storage type.
//
// A block of 4 warps takes 32 query rows of one (b, h), 8 rows per warp, and walks the keys in
// tiles of 32 staged in shared memory as float32: K transposed ([d][key], one padding column so
// that the lanes' reads and the block's transposing writes hit 32 different banks), V as rows.
// Scores: one key per lane, 8 rows at once, q read as float4 broadcasts. Softmax: a warp max per
// row and tile, lane-partial sums reduced once at the end. P V: each lane owns output columns
// lane, lane + 32, ...; the tile's probabilities reach it by shuffles. With weights requested
// the block walks the keys a second time and writes exp(s - max) / sum from the same scores.
//
// This is the first GPU kernel of attnkit, written for correctness on every shape the CPU
// kernel takes (any Tq, Tk; D, Dv up to 256; masks; strides). Tensor cores (mma.sync) and a
// split-K decode path are still to come.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "cuda/check.h"

namespace attnkit::cuda {
namespace {

constexpr const char* kOp = "scaled_dot_product_attention";
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 8;
constexpr int kBlockRows = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kTileKeys = 32;                      // one key per lane
constexpr int kKeyPitch = kTileKeys + 1;           // floats per row of the transposed K tile
constexpr int kMaxHeadDim = 256;                   // D and Dv: at most 8 output columns per lane
constexpr unsigned kFullWarp = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// fmaxf drops a NaN operand, so a NaN score does not become the row's maximum; it reaches the
// output through its probability, exp2(NaN - max) = NaN, as on the CPU.
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullWarp, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullWarp, x, offset);
  return x;
}

// The block's view of one (b, h): base pointers and the key range any of its rows may see.
template <typename T> struct Head {
  const T* k;
  const T* v;
  int64_t b, h;
  int64_t key_end;  // keys j >= key_end are masked for every row of the block
};

// Stages keys [j0, j0 + 32) of K (transposed, zero past key_end and past D) and V (zero past
// key_end) in shared memory as float32. Called by the whole block.
template <typename T>
__device__ void load_tile(const SdpaParams& p, const Head<T>& hd, int64_t j0, int Dp, float* kt, float* vs) {
  for (int idx = threadIdx.x; idx < kTileKeys * Dp; idx += blockDim.x) {
    const int jj = idx / Dp, d = idx - jj * Dp;
    const int64_t j = j0 + jj;
    kt[d * kKeyPitch + jj] = (j < hd.key_end && d < p.D) ? to_float(hd.k[j * p.k_stride[2] + d]) : 0.f;
  }
  const int Dv = int(p.Dv);
  for (int idx = threadIdx.x; idx < kTileKeys * Dv; idx += blockDim.x) {
    const int jj = idx / Dv, e = idx - jj * Dv;
    const int64_t j = j0 + jj;
    vs[idx] = j < hd.key_end ? to_float(hd.v[j * p.v_stride[2] + e]) : 0.f;
  }
}

// The warp's 8 rows against the lane's key of the staged tile, in log2 units (q was staged
// times scale * log2(e)); masked scores are -inf.
template <typename T>
__device__ void tile_scores(const SdpaParams& p, const Head<T>& hd, const float* qw, const float* kt, int Dp,
                            int64_t row0, int64_t j, float (&s)[kRowsPerWarp]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.f;
  for (int d = 0; d < Dp; d += 4) {
    const float k0 = kt[(d + 0) * kKeyPitch + lane], k1 = kt[(d + 1) * kKeyPitch + lane];
    const float k2 = kt[(d + 2) * kKeyPitch + lane], k3 = kt[(d + 3) * kKeyPitch + lane];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float4 q4 = *reinterpret_cast<const float4*>(qw + r * Dp + d);
      s[r] = fmaf(q4.x, k0, fmaf(q4.y, k1, fmaf(q4.z, k2, fmaf(q4.w, k3, s[r]))));
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = row0 + r;
    bool keep = i < p.Tq && j < hd.key_end && !(p.causal && j > i + p.causal_offset);
    if (keep && p.mask_kind != MaskKind::none) {
      const int64_t at = hd.b * p.mask_stride[0] + hd.h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
      if (p.mask_kind == MaskKind::keep_bool)
        keep = static_cast<const uint8_t*>(p.mask)[at] != 0;
      else
        s[r] = fmaf(to_float(static_cast<const T*>(p.mask)[at]), kLog2e, s[r]);
    }
    s[r] = keep ? s[r] : -INFINITY;
  }
}

// kCols = ceil(Dv / 32) output columns per lane, rounded up to 1, 2, 4 or 8.
template <typename T, int kCols>
__global__ void __launch_bounds__(kWarps * 32) sdpa_kernel(const SdpaParams p, const int Dp) {
  extern __shared__ float4 shared4[];
  float* qs = reinterpret_cast<float*>(shared4);  // [kBlockRows][Dp], scaled
  float* kt = qs + kBlockRows * Dp;                // [Dp][kKeyPitch]
  float* vs = kt + Dp * kKeyPitch;                 // [kTileKeys][Dv]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  Head<T> hd;
  hd.b = int64_t(blockIdx.x) / p.H;
  hd.h = int64_t(blockIdx.x) % p.H;
  hd.k = static_cast<const T*>(p.k) + hd.b * p.k_stride[0] + hd.h * p.k_stride[1];
  hd.v = static_cast<const T*>(p.v) + hd.b * p.v_stride[0] + hd.h * p.v_stride[1];
  const int64_t i0 = int64_t(blockIdx.y) * kBlockRows;
  const int64_t row0 = i0 + warp * kRowsPerWarp;

  const T* q = static_cast<const T*>(p.q) + hd.b * p.q_stride[0] + hd.h * p.q_stride[1];
  const float q_scale = float(p.scale) * kLog2e;
  for (int idx = threadIdx.x; idx < kBlockRows * Dp; idx += blockDim.x) {
    const int r = idx / Dp, d = idx - r * Dp;
    const int64_t i = i0 + r;
    qs[idx] = (i < p.Tq && d < p.D) ? to_float(q[i * p.q_stride[2] + d]) * q_scale : 0.f;
  }
  // Keys no row of the block sees are never read: past the batch entry's length, and with
  // causality past the last row's horizon.
  const int64_t valid_keys = p.key_lengths ? min64(max64(p.key_lengths[hd.b], 0), p.Tk) : p.Tk;
  int64_t key_end = valid_keys;
  if (p.causal) {
    const int64_t last = min64(i0 + kBlockRows, p.Tq) - 1;
    key_end = min64(key_end, max64(last + p.causal_offset + 1, 0));
  }
  hd.key_end = key_end;
  const float* qw = qs + warp * kRowsPerWarp * Dp;

  float row_max[kRowsPerWarp], lane_sum[kRowsPerWarp], acc[kRowsPerWarp][kCols];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    lane_sum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.f;
  }

  for (int64_t j0 = 0; j0 < key_end; j0 += kTileKeys) {
    __syncthreads();  // the previous tile is no longer read (and, first time, q is staged)
    load_tile(p, hd, j0, Dp, kt, vs);
    __syncthreads();
    float s[kRowsPerWarp], prob[kRowsPerWarp];
    tile_scores(p, hd, qw, kt, Dp, row0, j0 + lane, s);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float new_max = fmaxf(row_max[r], warp_max(s[r]));
      const float base = new_max == -INFINITY ? 0.f : new_max;  // all masked so far: nothing to rescale
      const float rescale = exp2f(row_max[r] - base);
      // No key seen yet: the accumulator restarts from zero (0 x the inf or NaN that a value row
      // masked for this row but seen by others may have left would stay NaN), as on the CPU.
      const bool fresh = row_max[r] == -INFINITY;
      prob[r] = exp2f(s[r] - base);
      lane_sum[r] = fmaf(lane_sum[r], rescale, prob[r]);
      row_max[r] = new_max;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] = fresh ? 0.f : acc[r][c] * rescale;
    }
    const int keys = int(min64(kTileKeys, key_end - j0));
    for (int jj = 0; jj < keys; ++jj) {
      float vj[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int e = lane + 32 * c;
        vj[c] = e < p.Dv ? vs[jj * p.Dv + e] : 0.f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(kFullWarp, prob[r], jj);
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[r][c] = fmaf(pj, vj[c], acc[r][c]);
      }
    }
  }

  // 1 / sum, 0 for a row with no key left (zeros, never NaN), NaN for a NaN sum.
  float inv_sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float total = warp_sum(lane_sum[r]);
    inv_sum[r] = total == 0.f ? 0.f : 1.f / total;
    const int64_t i = row0 + r;
    if (i >= p.Tq) continue;
    T* o = static_cast<T*>(p.o) + hd.b * p.o_stride[0] + hd.h * p.o_stride[1] + i * p.o_stride[2];
    // A row that sees no key gets zeros even when acc holds 0 x inf/NaN from V rows other rows
    // of the block see (as the CPU); a NaN total (NaN scores) still gives NaN.
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int e = lane + 32 * c;
      if (e < p.Dv) o[e] = from_float<T>(total == 0.f ? 0.f : acc[r][c] * inv_sum[r]);
    }
  }
  if (!p.weights) return;

  // Weights: the same scores again, tile by tile; zeros past the block's keys.
  for (int64_t j0 = 0; j0 < p.Tk; j0 += kTileKeys) {
    const bool scored = j0 < key_end;  // the same for the whole block
    float s[kRowsPerWarp];
    if (scored) {
      __syncthreads();
      load_tile(p, hd, j0, Dp, kt, vs);
      __syncthreads();
      tile_scores(p, hd, qw, kt, Dp, row0, j0 + lane, s);
    }
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t i = row0 + r;
      if (i >= p.Tq || j >= p.Tk) continue;
      // Keys past the row's own limit (its length, causality) weigh 0, as on the CPU, even in a
      // row whose NaN scores make every other weight NaN.
      const bool past = j >= valid_keys || (p.causal && j > i + p.causal_offset);
      float w = 0.f;
      if (scored && !past) w = exp2f(s[r] - (row_max[r] == -INFINITY ? 0.f : row_max[r])) * inv_sum[r];
      T* wrow = static_cast<T*>(p.weights) + hd.b * p.w_stride[0] + hd.h * p.w_stride[1] + i * p.w_stride[2];
      wrow[j] = from_float<T>(w);
    }
  }
}

template <typename T, int kCols> void launch_with(const SdpaParams& p, cudaStream_t stream) {
  const int Dp = int((p.D + 3) / 4 * 4);
  const size_t shared = sizeof(float) * size_t(kBlockRows * Dp + Dp * kKeyPitch + kTileKeys * p.Dv);
  auto kernel = sdpa_kernel<T, kCols>;
  allow_dynamic_shared(kernel, shared, "scaled_dot_product_attention");
  const dim3 grid(unsigned(p.B * p.H), unsigned((p.Tq + kBlockRows - 1) / kBlockRows));
  clear_stale_error();
  kernel<<<grid, kWarps * 32, shared, stream>>>(p, Dp);
  check(cudaGetLastError(), "scaled_dot_product_attention: kernel launch");
}

template <typename T> void launch(const SdpaParams& p, cudaStream_t stream) {
  if (p.Dv <= 32) return launch_with<T, 1>(p, stream);
  if (p.Dv <= 64) return launch_with<T, 2>(p, stream);
  if (p.Dv <= 128) return launch_with<T, 4>(p, stream);
  return launch_with<T, 8>(p, stream);
}

[[noreturn]] void fail(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }

}  // namespace

void scaled_dot_product_attention(const SdpaParams& p, const Launch& at) {
  if (p.B < 1 || p.H < 1 || p.Tq < 1 || p.Tk < 1 || p.D < 1 || p.Dv < 1)
    fail("every axis must be non-empty, got B=" + std::to_string(p.B) + " H=" + std::to_string(p.H) +
         " Tq=" + std::to_string(p.Tq) + " Tk=" + std::to_string(p.Tk) + " D=" + std::to_string(p.D) +
         " Dv=" + std::to_string(p.Dv));
  if (!(std::isfinite(p.scale) && p.scale > 0)) fail("scale must be a finite number > 0, got " + std::to_string(p.scale));
  if (!p.q || !p.k || !p.v || !p.o) fail("q, k, v and out must all be given");
  if (p.mask_kind != MaskKind::none && !p.mask) fail("mask kind given without a mask");
  if (p.D > kMaxHeadDim || p.Dv > kMaxHeadDim)
    throw UnsupportedError(std::string(kOp) + ": on the GPU the head dims must be at most " +
                           std::to_string(kMaxHeadDim) + ", got D=" + std::to_string(p.D) +
                           " and Dv=" + std::to_string(p.Dv));
  // Grid: x = B * H (up to 2^31 - 1 blocks), y = query tiles (up to 65535).
  if (p.B * p.H > 0x7fffffffLL || (p.Tq + kBlockRows - 1) / kBlockRows > 65535)
    throw UnsupportedError(std::string(kOp) + ": on the GPU B * H must be below 2^31 and Tq at most " +
                           std::to_string(65535LL * kBlockRows) + ", got B * H=" + std::to_string(p.B * p.H) +
                           " and Tq=" + std::to_string(p.Tq));
  DeviceGuard on(at.device, kOp);
  const auto stream = reinterpret_cast<cudaStream_t>(at.stream);
  switch (p.dtype) {
    case DType::f32: return launch<float>(p, stream);
    case DType::f16: return launch<__half>(p, stream);
    case DType::bf16: return launch<__nv_bfloat16>(p, stream);
    default:
      throw TypeError(std::string(kOp) + ": on the GPU q, k and v must be float32, float16 or bfloat16, got " +
                      dtype_name(p.dtype));
  }
}

}  // namespace attnkit::cuda
