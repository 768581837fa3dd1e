// Binding of scaled_dot_product_attention on GPU arrays: imports the DLPack capsules, rechecks
// everything the kernel relies on (the Python layer has already checked the caller's arguments
// with messages in the caller's shapes) and launches on the caller's stream.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "bindings/device_array.h"
#include "bindings/register.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

[[noreturn]] void value_error(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }
[[noreturn]] void type_error(const std::string& what) { throw TypeError(std::string(kOp) + ": " + what); }

// The kernel reads rows of q, k, v and writes rows of out and weights with unit stride.
void require_unit_last_stride(const DeviceArray& a) {
  const int last = a.ndim() - 1;
  if (a.shape(last) != 1 && a.stride(last) != 1)
    value_error(std::string(a.name()) + " must have a contiguous last axis, got a stride of " +
                std::to_string(a.stride(last)) + " elements");
}

void strides3(const DeviceArray& a, int64_t s[3]) {
  for (int i = 0; i < 3; ++i) s[i] = a.stride(i);
}

void sdpa_cuda(nb::ndarray<> q_in, nb::ndarray<> k_in, nb::ndarray<> v_in, nb::ndarray<> out_in,
               std::optional<nb::ndarray<>> weights_in, std::optional<nb::ndarray<>> lengths_in,
               std::optional<nb::ndarray<>> mask_in, bool causal, int64_t causal_offset, double scale,
               std::uintptr_t stream) {
  const DeviceArray q(q_in, kOp, "q"), k(k_in, kOp, "k"), v(v_in, kOp, "v"), out(out_in, kOp, "out");
  std::optional<DeviceArray> weights, lengths, mask;
  if (weights_in) weights.emplace(*weights_in, kOp, "weights");
  if (lengths_in) lengths.emplace(*lengths_in, kOp, "key_lengths");
  if (mask_in) mask.emplace(*mask_in, kOp, "mask");

  std::vector<const DeviceArray*> all{&q, &k, &v, &out};
  for (const auto* a : {&weights, &lengths, &mask})
    if (*a) all.push_back(&**a);
  for (const DeviceArray* a : all)
    if (a->device() != q.device())
      value_error(std::string("every array must be on q's device (cuda:") + std::to_string(q.device()) + "), got " +
                  a->name() + " on cuda:" + std::to_string(a->device()));

  SdpaParams p;
  if (!q.float_dtype(&p.dtype)) type_error("q must be float32, float16 or bfloat16, got " + q.dtype_name());
  for (const DeviceArray* a : {&k, &v, &out}) {
    DType t;
    if (!a->float_dtype(&t) || t != p.dtype)
      type_error(std::string(a->name()) + " must have q's dtype " + dtype_name(p.dtype) + ", got " + a->dtype_name());
  }
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4)
    value_error("q, k and v must be 4-D here, got " + q.shape_str() + ", " + k.shape_str() + " and " + v.shape_str());
  p.B = q.shape(0), p.H = q.shape(1), p.Tq = q.shape(2), p.D = q.shape(3);
  p.Tk = k.shape(2), p.Dv = v.shape(3);
  k.require_shape({p.B, p.H, p.Tk, p.D});
  v.require_shape({p.B, p.H, p.Tk, p.Dv});
  out.require_shape({p.B, p.H, p.Tq, p.Dv});
  for (const DeviceArray* a : {&q, &k, &v, &out}) require_unit_last_stride(*a);
  if (!out.c_contiguous()) value_error("out must be C-contiguous on the GPU, got strides of another layout");
  for (const DeviceArray* a : {&q, &k, &v})
    if (out.may_overlap(*a)) value_error(std::string("out must not share memory with ") + a->name() + " on the GPU");
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = out.data();
  strides3(q, p.q_stride), strides3(k, p.k_stride), strides3(v, p.v_stride), strides3(out, p.o_stride);

  if (weights) {
    DType t;
    if (!weights->float_dtype(&t) || t != p.dtype)
      type_error(std::string("weights must have q's dtype ") + dtype_name(p.dtype) + ", got " + weights->dtype_name());
    weights->require_shape({p.B, p.H, p.Tq, p.Tk});
    if (!weights->c_contiguous()) value_error("weights must be C-contiguous on the GPU");
    for (const DeviceArray* a : {&q, &k, &v, &out})
      if (weights->may_overlap(*a)) value_error(std::string("weights must not share memory with ") + a->name());
    p.weights = weights->data();
    strides3(*weights, p.w_stride);
  }
  if (lengths) {
    if (!lengths->is_int64()) type_error("key_lengths must be int64 on the GPU, got " + lengths->dtype_name());
    lengths->require_shape({p.B});
    if (p.B > 1 && lengths->stride(0) != 1) value_error("key_lengths must be contiguous on the GPU");
    p.key_lengths = static_cast<const int64_t*>(lengths->data());
  }
  if (mask) {
    mask->require_shape({p.B, p.H, p.Tq, p.Tk});
    DType t;
    if (mask->is_bool())
      p.mask_kind = MaskKind::keep_bool;
    else if (mask->float_dtype(&t) && t == p.dtype)
      p.mask_kind = MaskKind::additive;
    else
      type_error(std::string("mask must be bool (True = keep) or an additive mask of q's dtype, got ") +
                 mask->dtype_name());
    for (int i = 0; i < 4; ++i) p.mask_stride[i] = mask->stride(i);
    p.mask = mask->data();
  }
  // Other blocks would overwrite a mask or lengths that a block is still reading.
  for (const auto* a : {&lengths, &mask}) {
    if (!*a) continue;
    if (out.may_overlap(**a)) value_error(std::string("out must not share memory with ") + (*a)->name() + " on the GPU");
    if (weights && weights->may_overlap(**a))
      value_error(std::string("weights must not share memory with ") + (*a)->name() + " on the GPU");
  }
  p.causal = causal;
  p.causal_offset = causal_offset;
  p.scale = scale == 0.0 ? 1.0 / std::sqrt(double(p.D)) : scale;  // 0: the default, 1/sqrt(D)

  nb::gil_scoped_release release;
  cuda::scaled_dot_product_attention(p, cuda::Launch{q.device(), stream});
}

}  // namespace

void register_dot_product_cuda(nb::module_& m) {
  m.def("sdpa_cuda", &sdpa_cuda, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("weights").none(),
        nb::arg("key_lengths").none(), nb::arg("mask").none(), nb::arg("causal"), nb::arg("causal_offset"),
        nb::arg("scale"), nb::arg("stream"),
        "Private GPU kernel entry; use attnkit.scaled_dot_product_attention with CuPy arrays.");
}

}  // namespace attnkit::bindings
