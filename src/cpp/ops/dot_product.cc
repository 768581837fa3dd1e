// Front door of scaled dot-product attention: the last line of defence before a kernel, so it
// rechecks what a kernel relies on even though the Python layer validated the arrays first.
#include "ops/dot_product.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "attnkit/errors.h"
#include "attnkit/sizes.h"
#include "cpu/isa.h"

namespace attnkit {
namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

[[noreturn]] void fail(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }

}  // namespace

void scaled_dot_product_attention_cpu(const SdpaParams& p) {
  if (p.dtype != DType::f32 && p.dtype != DType::f64)
    throw TypeError(std::string(kOp) + ": the CPU kernels take float32 or float64, got " + dtype_name(p.dtype));
  if (p.B < 1 || p.H < 1 || p.Tq < 1 || p.Tk < 1 || p.D < 1 || p.Dv < 1)
    fail("every axis must be non-empty, got B=" + std::to_string(p.B) + " H=" + std::to_string(p.H) +
         " Tq=" + std::to_string(p.Tq) + " Tk=" + std::to_string(p.Tk) + " D=" + std::to_string(p.D) +
         " Dv=" + std::to_string(p.Dv));
  if (!(std::isfinite(p.scale) && p.scale > 0))
    fail("scale must be a finite number > 0, got " + std::to_string(p.scale));
  if (!p.q || !p.k || !p.v || !p.o) fail("q, k, v and out must all be given");
  if (p.key_lengths) {
    const auto [lo, hi] = std::minmax_element(p.key_lengths, p.key_lengths + p.B);
    if (*lo < 0 || *hi > p.Tk)
      fail("key_lengths must lie in [0, Tk=" + std::to_string(p.Tk) + "], got min " + std::to_string(*lo) +
           " and max " + std::to_string(*hi));
  }
  if (p.mask_kind != MaskKind::none && !p.mask) fail("mask kind given without a mask");
  // Broadcast inputs are views that can be far larger than memory. The products that index the
  // kernel's outputs and scratch (padded per-row outputs; packed K and V, a 2x margin for split
  // decode partials) must fit in int64: past that no memory could hold them (MemoryError).
  checked_product({p.B, p.H, p.Tq, std::max(p.D, p.Dv) + 64, 8});
  if (p.weights) checked_product({p.B, p.H, p.Tq, p.Tk, 8});
  checked_product({p.Tk + 64, p.D + p.Dv + 128, 16});
  ATTNKIT_CPU_DISPATCH(sdpa_forward, p);
}

}  // namespace attnkit
