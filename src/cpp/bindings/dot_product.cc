// Binding of scaled_dot_product_attention: reads the host arrays, checks every argument with a
// message that names it, and fills SdpaParams. The Python front door only reshapes 3-D inputs
// to 4-D head views (three_d = true), broadcasts the mask and allocates outputs, so the common
// call pays for one set of checks, here.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "attnkit/sizes.h"
#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/dot_product.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

[[noreturn]] void value_error(const std::string& what) { throw ValueError(std::string(kOp) + ": " + what); }
[[noreturn]] void type_error(const std::string& what) { throw TypeError(std::string(kOp) + ": " + what); }

// Shapes are shown as the caller passed them: without the head axis that 3-D inputs were given.
struct Shapes {
  bool three_d;
  std::string of(const HostArray& a) const { return a.shape_str(three_d ? 1 : -1); }
  std::string of(int64_t b, int64_t h, int64_t t, int64_t d) const {
    return three_d ? "(" + std::to_string(b) + ", " + std::to_string(t) + ", " + std::to_string(d) + ")"
                   : "(" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(t) + ", " +
                         std::to_string(d) + ")";
  }
};

// Element strides of a 4-D array for the kernel; an input whose last axis is not contiguous, or
// which is not aligned to its item size, is copied into `storage` first (kernels read rows with
// vector loads and elements through typed pointers).
const void* kernel_view(const HostArray& a, std::unique_ptr<char[]>& storage, int64_t strides[3]) {
  if ((a.shape(3) == 1 || a.stride(3) == 1) && a.aligned()) {
    for (int i = 0; i < 3; ++i) strides[i] = a.stride(i);
    return a.data();
  }
  const int64_t n0 = a.shape(0), n1 = a.shape(1), n2 = a.shape(2), n3 = a.shape(3), item = a.itemsize();
  // A broadcast view can be far larger than the memory behind it: the copy may not fit.
  storage = allocate_array<char>(checked_product({n0, n1, n2, n3, item}));
  char* dst = storage.get();
  const char* src = static_cast<const char*>(a.data());
  for (int64_t i0 = 0; i0 < n0; ++i0)
    for (int64_t i1 = 0; i1 < n1; ++i1)
      for (int64_t i2 = 0; i2 < n2; ++i2)
        for (int64_t i3 = 0; i3 < n3; ++i3, dst += item)
          std::memcpy(dst, src + (i0 * a.stride(0) + i1 * a.stride(1) + i2 * a.stride(2) + i3 * a.stride(3)) * item,
                      size_t(item));
  strides[0] = n1 * n2 * n3, strides[1] = n2 * n3, strides[2] = n3;
  return storage.get();
}

// An output array: the caller's, or, when it shares memory with an input (or is not aligned to
// its item size), a contiguous temporary that is copied into it after the kernel (the result is
// then what it would be without the overlap, NumPy's rule for out=).
struct Output {
  const HostArray& array;
  std::unique_ptr<char[]> temporary;  // null: the kernel writes into array itself
  int64_t dims[4] = {};

  void* prepare(const std::vector<const HostArray*>& inputs, int64_t strides[3]) {
    bool shared = !array.aligned();
    for (const HostArray* in : inputs) shared = shared || (in && array.may_overlap(*in));
    if (!shared) return array.data();
    temporary = allocate_array<char>(checked_product({dims[0], dims[1], dims[2], dims[3], array.itemsize()}));
    strides[0] = dims[1] * dims[2] * dims[3], strides[1] = dims[2] * dims[3], strides[2] = dims[3];
    return temporary.get();
  }
  void finish() const {
    if (!temporary) return;
    const int64_t item = array.itemsize(), row = dims[3] * item;
    const char* src = temporary.get();
    char* base = static_cast<char*>(array.data());
    for (int64_t i0 = 0; i0 < dims[0]; ++i0)
      for (int64_t i1 = 0; i1 < dims[1]; ++i1)
        for (int64_t i2 = 0; i2 < dims[2]; ++i2, src += row)
          std::memcpy(base + (i0 * array.stride(0) + i1 * array.stride(1) + i2 * array.stride(2)) * item, src,
                      size_t(row));
  }
};

void check_output(const HostArray& a, const char* name, const Shapes& s, Kind kind, const char* dtype_name,
                  int64_t b, int64_t h, int64_t t, int64_t d, int64_t strides[3]) {
  if (a.ndim() != 4 || a.shape(0) != b || a.shape(1) != h || a.shape(2) != t || a.shape(3) != d)
    value_error(std::string(name) + " must have shape " + s.of(b, h, t, d) + ", got " +
                (a.ndim() == 4 ? s.of(a) : a.shape_str()));
  if (a.kind() != kind) type_error(std::string(name) + " must have dtype " + dtype_name + ", got " + a.dtype_name());
  if (a.readonly()) value_error(std::string(name) + " must be writeable");
  if (a.may_self_overlap())
    value_error(std::string(name) + " must not have overlapping elements (zero or overlapping strides)");
  if (d != 1 && a.stride(3) != 1)
    value_error(std::string(name) + " must have a contiguous last axis, got a stride of " + std::to_string(a.stride(3)) +
                " elements");
  for (int i = 0; i < 3; ++i) strides[i] = a.stride(i);
}

void sdpa(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle out_obj, nb::handle weights_obj,
          nb::handle lengths_obj, nb::handle mask_obj, bool causal, int64_t causal_offset, double scale, bool three_d) {
  const Shapes s{three_d};
  HostArray q(q_obj, kOp, "q"), k(k_obj, kOp, "k"), v(v_obj, kOp, "v");
  if (q.kind() != Kind::f32 && q.kind() != Kind::f64)
    type_error(std::string("q must have dtype float32 or float64, got ") + q.dtype_name());
  if (k.kind() != q.kind() || v.kind() != q.kind())
    type_error(std::string("q, k and v must share one dtype, got ") + q.dtype_name() + ", " + k.dtype_name() + " and " +
               v.dtype_name());
  for (const HostArray* a : {&q, &k, &v}) {
    const char* name = a == &q ? "q" : a == &k ? "k" : "v";
    if (a->ndim() != 3 && a->ndim() != 4)
      value_error(std::string(name) + " must be 3-D or 4-D, got shape " + a->shape_str());
  }
  if (q.ndim() != k.ndim() || q.ndim() != v.ndim())
    value_error("q, k and v must have the same rank, got " + std::to_string(q.ndim()) + ", " + std::to_string(k.ndim()) +
                " and " + std::to_string(v.ndim()));
  if (q.ndim() != 4) value_error("3-D inputs must come through attnkit.scaled_dot_product_attention");
  for (const HostArray* a : {&q, &k, &v})
    for (int i = 0; i < 4; ++i)
      if (a->shape(i) == 0)
        value_error(std::string(a == &q ? "q" : a == &k ? "k" : "v") + " must not have an empty axis, got shape " +
                    s.of(*a));

  SdpaParams p;
  p.dtype = q.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.B = q.shape(0), p.H = q.shape(1), p.Tq = q.shape(2), p.D = q.shape(3);
  p.Tk = k.shape(2), p.Dv = v.shape(3);
  if (k.shape(0) != p.B || k.shape(1) != p.H || k.shape(3) != p.D)
    value_error(std::string("k must be ") + (three_d ? "[B, Tk, D]" : "[B, H, Tk, D]") + " with B, H, D as in q " +
                s.of(q) + ", got " + s.of(k));
  if (v.shape(0) != p.B || v.shape(1) != p.H || v.shape(2) != p.Tk)
    value_error(std::string("v must be ") + (three_d ? "[B, Tk, Dv]" : "[B, H, Tk, Dv]") + " with B, H, Tk as in k " +
                s.of(k) + ", got " + s.of(v));

  std::unique_ptr<char[]> q_copy, k_copy, v_copy;
  p.q = kernel_view(q, q_copy, p.q_stride);
  p.k = kernel_view(k, k_copy, p.k_stride);
  p.v = kernel_view(v, v_copy, p.v_stride);

  HostArray out(out_obj, kOp, "out");
  check_output(out, "out", s, q.kind(), q.dtype_name(), p.B, p.H, p.Tq, p.Dv, p.o_stride);

  std::unique_ptr<HostArray> weights;
  if (!weights_obj.is_none()) {
    weights = std::make_unique<HostArray>(weights_obj, kOp, "weights");
    check_output(*weights, "weights", s, q.kind(), q.dtype_name(), p.B, p.H, p.Tq, p.Tk, p.w_stride);
    if (weights->may_overlap(out)) value_error("out and weights must not share memory");
  }

  std::unique_ptr<HostArray> lengths;
  std::vector<int64_t> lengths_copy;
  if (!lengths_obj.is_none()) {
    lengths = std::make_unique<HostArray>(lengths_obj, kOp, "key_lengths");
    if (lengths->kind() != Kind::i64)
      type_error(std::string("key_lengths must hold integers, got dtype ") + lengths->dtype_name());
    if (lengths->ndim() != 1 || lengths->shape(0) != p.B)
      value_error("key_lengths must have shape (" + std::to_string(p.B) + ",) (one per batch entry), got " +
                  lengths->shape_str());
    const int64_t* data = static_cast<const int64_t*>(lengths->data());
    if ((p.B > 1 && lengths->stride(0) != 1) || !lengths->aligned()) {
      const char* bytes = static_cast<const char*>(lengths->data());
      lengths_copy.resize(size_t(p.B));
      for (int64_t b = 0; b < p.B; ++b)
        std::memcpy(&lengths_copy[size_t(b)], bytes + b * lengths->stride(0) * 8, 8);
      data = lengths_copy.data();
    }
    p.key_lengths = data;
  }

  std::unique_ptr<HostArray> mask;
  if (!mask_obj.is_none()) {
    mask = std::make_unique<HostArray>(mask_obj, kOp, "mask");
    if (mask->ndim() != 4 || mask->shape(0) != p.B || mask->shape(1) != p.H || mask->shape(2) != p.Tq ||
        mask->shape(3) != p.Tk)
      value_error("mask must be broadcast to " + s.of(p.B, p.H, p.Tq, p.Tk) + ", got " + mask->shape_str());
    if (mask->kind() == Kind::boolean)
      p.mask_kind = MaskKind::keep_bool;
    else if (mask->kind() == q.kind())
      p.mask_kind = MaskKind::additive;
    else
      type_error(std::string("mask must be bool (True = keep) or an additive mask of q's dtype, got dtype ") +
                 mask->dtype_name());
    if (!mask->aligned()) value_error("mask must be aligned to its item size (copy it), got an unaligned view");
    for (int i = 0; i < 4; ++i) p.mask_stride[i] = mask->stride(i);
    p.mask = mask->data();
  }
  p.causal = causal;
  p.causal_offset = causal_offset;
  // 0 stands for the default: the Python front door checks a scale the user gives.
  p.scale = scale == 0.0 ? 1.0 / std::sqrt(double(p.D)) : scale;

  const std::vector<const HostArray*> inputs{&q, &k, &v, lengths.get(), mask.get()};
  Output o{out, {}, {p.B, p.H, p.Tq, p.Dv}};
  p.o = o.prepare(inputs, p.o_stride);
  std::unique_ptr<Output> w;
  if (weights) {
    w.reset(new Output{*weights, {}, {p.B, p.H, p.Tq, p.Tk}});
    p.weights = w->prepare(inputs, p.w_stride);
  }
  nb::gil_scoped_release release;
  scaled_dot_product_attention_cpu(p);
  o.finish();
  if (w) w->finish();
}

}  // namespace

void register_dot_product(nb::module_& m) {
  m.def("sdpa", &sdpa, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("weights").none(),
        nb::arg("key_lengths").none(), nb::arg("mask").none(), nb::arg("causal"), nb::arg("causal_offset"),
        nb::arg("scale"), nb::arg("three_d") = false,
        "Private kernel entry; use attnkit.scaled_dot_product_attention.");
}

}  // namespace attnkit::bindings
