#include <optional>

#include "bindings/common.h"
#include "bindings/register.h"
#include "ops/dot_product.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

// Arrays arrive 4-D from the Python front door, which has already reshaped 3-D inputs,
// broadcast the mask and allocated the outputs.
void sdpa(const InArray& q, const InArray& k, const InArray& v, const OutArray& out,
          const std::optional<OutArray>& weights, const std::optional<InArray>& key_lengths,
          const std::optional<InArray>& mask, bool causal, double scale) {
  SdpaParams p;
  p.dtype = float_dtype(kOp, "q", q.dtype());
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype() || out.dtype() != q.dtype())
    throw TypeError(std::string(kOp) + ": q, k, v and out must share one dtype");
  strides3(kOp, "q", q, p.q_stride);
  strides3(kOp, "k", k, p.k_stride);
  strides3(kOp, "v", v, p.v_stride);
  strides3(kOp, "out", InArray(out), p.o_stride);
  p.B = q.shape(0), p.H = q.shape(1), p.Tq = q.shape(2), p.D = q.shape(3);
  p.Tk = k.shape(2), p.Dv = v.shape(3);
  require(k.shape(0) == size_t(p.B) && k.shape(1) == size_t(p.H) && k.shape(3) == size_t(p.D), kOp,
          "k must be [B, H, Tk, D] matching q " + shape_str(q) + ", got " + shape_str(k));
  require(v.shape(0) == size_t(p.B) && v.shape(1) == size_t(p.H) && v.shape(2) == size_t(p.Tk), kOp,
          "v must be [B, H, Tk, Dv] matching k " + shape_str(k) + ", got " + shape_str(v));
  require(out.shape(0) == size_t(p.B) && out.shape(1) == size_t(p.H) && out.shape(2) == size_t(p.Tq) &&
              out.shape(3) == size_t(p.Dv),
          kOp, "out has the wrong shape " + shape_str(InArray(out)));
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = out.data();
  if (weights) {
    if (weights->dtype() != q.dtype()) throw TypeError(std::string(kOp) + ": weights must have q's dtype");
    strides3(kOp, "weights", InArray(*weights), p.w_stride);
    require(weights->shape(0) == size_t(p.B) && weights->shape(1) == size_t(p.H) &&
                weights->shape(2) == size_t(p.Tq) && weights->shape(3) == size_t(p.Tk),
            kOp, "weights must be [B, H, Tq, Tk]");
    p.weights = weights->data();
  }
  if (key_lengths) {
    require(key_lengths->ndim() == 1 && key_lengths->shape(0) == size_t(p.B) &&
                (p.B == 1 || key_lengths->stride(0) == 1),
            kOp, "key_lengths must be a contiguous [B] array");
    if (key_lengths->dtype() != nb::dtype<int64_t>()) throw TypeError(std::string(kOp) + ": key_lengths must be int64");
    p.key_lengths = static_cast<const int64_t*>(key_lengths->data());
  }
  if (mask) {
    require(mask->ndim() == 4 && mask->shape(0) == size_t(p.B) && mask->shape(1) == size_t(p.H) &&
                mask->shape(2) == size_t(p.Tq) && mask->shape(3) == size_t(p.Tk),
            kOp, "mask must be broadcast to [B, H, Tq, Tk], got " + shape_str(*mask));
    if (mask->dtype() == nb::dtype<bool>())
      p.mask_kind = MaskKind::keep_bool;
    else if (mask->dtype() == q.dtype())
      p.mask_kind = MaskKind::additive;
    else
      throw TypeError(std::string(kOp) + ": mask must be bool or q's dtype");
    for (int i = 0; i < 4; ++i) p.mask_stride[i] = mask->stride(i);
    p.mask = mask->data();
  }
  p.causal = causal;
  p.scale = scale;
  nb::gil_scoped_release release;
  scaled_dot_product_attention_cpu(p);
}

}  // namespace

void register_dot_product(nb::module_& m) {
  m.def("sdpa", &sdpa, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("weights").none(),
        nb::arg("key_lengths").none(), nb::arg("mask").none(), nb::arg("causal"), nb::arg("scale"),
        "Private kernel entry; use attnkit.scaled_dot_product_attention.");
}

}  // namespace attnkit::bindings
