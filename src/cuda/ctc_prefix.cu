// CTC prefix scores on NVIDIA GPUs (CtcPrefixParams in params.h; the CPU kernel is
// src/cpp/cpu/ctc_prefix.cc): one thread per lane (prefix x candidate), walking the frames. Lanes
// are the fastest axis of r, so a warp's stores of a frame are coalesced; its reads of x are a
// gather from one row (the candidates of a few prefixes: L2 hits), and phi and the blank's
// log-posterior are shared by the C lanes of one prefix.
//
// The same order of operations as the CPU kernel: psi's terms in two passes (their maximum, then
// the sum of exp(term - max) beside the recursion), a NaN term dropped from the maximum and kept
// by the sum; logaddexp as NumPy's. libm's exp and log1p, in the call's dtype. The frame range
// comes from the host (start, end) or, for the CTC window, from a device array that the search
// computed from the attention weights (p.window). Written without a GPU: it has not run on one
// yet (NOTES.md).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "cuda/check.h"

namespace attnkit::cuda {
namespace {

constexpr const char* kOp = "ctc_prefix_scores";
constexpr int kThreads = 256;

// NumPy's logaddexp: a + ln 2 for a == b (two infinities of one sign too); NaN when either is.
template <typename T> __device__ __forceinline__ T log_add_exp(T a, T b) {
  if (a == b) return a + T(0.6931471805599453);
  const T d = a - b;
  if (d != d) return d;
  return d > T(0) ? a + log1p(exp(-d)) : b + log1p(exp(d));
}

template <typename T>
__global__ void ctc_prefix_kernel(CtcPrefixParams p) {
  const int64_t L = p.N * p.C;
  const int64_t lane = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (lane >= L) return;
  const int64_t n = lane / p.C;
  // Columns clamped to x's (the host builds them in range; a bad one must not read outside x).
  const int64_t label = min(max(p.label_col[lane], int64_t(0)), p.M - 1);
  const int64_t blank_col = min(max(p.blank_col[n], int64_t(0)), p.M - 1);
  const T* x = static_cast<const T*>(p.x);
  const T* phi_source = static_cast<const T*>(p.repeat[lane] ? p.r_blank : p.r_sum) + n;
  T* r = static_cast<T*>(p.r) + lane;
  const T zero_log = T(p.logzero);
  int64_t start_asked = p.window ? p.window[0] : p.start, end_asked = p.window ? p.window[1] : p.end;
  start_asked = start_asked > 1 ? start_asked : 1;  // the host checks its own bounds; these are clamped
  const int64_t start = start_asked < p.T ? start_asked : p.T;
  int64_t end = end_asked < p.T ? end_asked : p.T;
  end = end > start ? end : start;
  for (int64_t t = 0; t < p.T; ++t) {
    if (t >= start && t < end) continue;
    r[(2 * t) * L] = t == 0 && p.first_label ? x[label] : zero_log;
    r[(2 * t + 1) * L] = zero_log;
  }
  T* psi = static_cast<T*>(p.psi) + lane;
  if (start_asked > p.T) {
    *psi = zero_log;
    return;
  }
  const T first = start == 1 && p.first_label ? x[label] : zero_log;  // r[start - 1][0]
  T top = first;
  for (int64_t t = start; t < end; ++t) {
    const T term = phi_source[(t - 1) * p.N] + x[t * p.M + label];
    top = term > top ? term : top;
  }
  T rn = first, rb = zero_log, sum = T(0);
  for (int64_t t = start; t < end; ++t) {
    const T phi_prev = phi_source[(t - 1) * p.N], xt = x[t * p.M + label];
    const T rn_new = log_add_exp(rn, phi_prev) + xt;
    rb = log_add_exp(rn, rb) + x[t * p.M + blank_col];
    rn = rn_new;
    sum += exp(phi_prev + xt - top);
    r[(2 * t) * L] = rn;
    r[(2 * t + 1) * L] = rb;
  }
  *psi = top + log(sum + exp(first - top));
}

[[noreturn]] void fail(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }

}  // namespace

void ctc_prefix_scores(const CtcPrefixParams& p, const Launch& at) {
  if (p.T < 0 || p.N < 0 || p.C < 0)
    fail("T, N and C must be >= 0, got T=" + std::to_string(p.T) + " N=" + std::to_string(p.N) +
         " C=" + std::to_string(p.C));
  if (!p.window) {
    if (p.start < 1) fail("start must be >= 1 (frame 0 only starts a first label), got " + std::to_string(p.start));
    if (p.end > p.T) fail("end must be <= T=" + std::to_string(p.T) + ", got " + std::to_string(p.end));
  }
  if (!p.x || !p.label_col || !p.blank_col || !p.r_sum || !p.r_blank || !p.repeat || !p.r || !p.psi)
    fail("every array must be given");
  const int64_t lanes = p.N * p.C;
  if (lanes == 0) return;  // (T == 0 runs: the kernel writes psi = logzero, start >= 1 being > T)
  if (p.M < 1) fail("x must have at least one column, got M=" + std::to_string(p.M));
  if ((lanes + kThreads - 1) / kThreads > 0x7fffffffLL)
    throw UnsupportedError(std::string(kOp) + ": N x C too large for one launch on the GPU");
  DeviceGuard on(at.device, kOp);
  const auto stream = reinterpret_cast<cudaStream_t>(at.stream);
  const unsigned blocks = unsigned((lanes + kThreads - 1) / kThreads);
  clear_stale_error();
  switch (p.dtype) {
    case DType::f32: ctc_prefix_kernel<float><<<blocks, kThreads, 0, stream>>>(p); break;
    case DType::f64: ctc_prefix_kernel<double><<<blocks, kThreads, 0, stream>>>(p); break;
    default:
      throw TypeError(std::string(kOp) + ": on the GPU the scores must be float32 or float64, got " +
                      dtype_name(p.dtype));
  }
  check(cudaGetLastError(), "ctc_prefix_scores: kernel launch");
}

}  // namespace attnkit::cuda
