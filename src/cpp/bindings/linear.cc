// Binding of the step-sized Linear layer: x [N, K], weight [A, K] (or packed: [ceil(A/P), K, P],
// P = 64 bytes of outputs), bias [A] or None, out [N, A], all C-contiguous and of one float dtype
// (packed float32 panels may be float16); tanh applies tanh to the outputs in the kernel.
#include <memory>
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/linear.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "linear";

void check(const HostArray& a, const char* name, Kind kind, const std::vector<int64_t>& shape) {
  require_c_array(a, kOp, name, kind, shape, "the step's");
}

void linear(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj, nb::handle out_obj, bool packed, bool tanh) {
  HostArray x(x_obj, kOp, "x"), w(w_obj, kOp, "weight"), out(out_obj, kOp, "out");
  if ((x.kind() != Kind::f32 && x.kind() != Kind::f64) || x.ndim() != 2 || out.ndim() != 2 || w.ndim() != (packed ? 3 : 2))
    throw TypeError(std::string(kOp) + ": x and out must be 2-D float32 or float64 arrays, weight " +
                    (packed ? "3-D (packed)" : "2-D"));
  LinearParams p;
  p.dtype = x.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.packed = packed;
  p.tanh = tanh;
  p.N = x.shape(0), p.K = x.shape(1), p.A = packed ? out.shape(1) : w.shape(0);
  const int64_t panel = kLinearPanelBytes / (x.kind() == Kind::f32 ? 4 : 8);
  check(x, "x", x.kind(), {p.N, p.K});
  // float32 panels may come as float16 (PackedWeight stores them so when that is exact).
  p.half_panels = packed && x.kind() == Kind::f32 && w.kind() == Kind::f16;
  check(w, "weight", p.half_panels ? Kind::f16 : x.kind(),
        packed ? std::vector<int64_t>{(p.A + panel - 1) / panel, p.K, panel} : std::vector<int64_t>{p.A, p.K});
  check(out, "out", x.kind(), {p.N, p.A});
  if (out.readonly()) throw ValueError(std::string(kOp) + ": out must be writeable");
  std::unique_ptr<HostArray> b;
  if (!b_obj.is_none()) {
    b = std::make_unique<HostArray>(b_obj, kOp, "bias");
    check(*b, "bias", x.kind(), {p.A});
    p.bias = b->data();
  }
  p.x = x.data(), p.w = w.data(), p.y = out.data();
  nb::gil_scoped_release release;
  linear_cpu(p);
}

void pack_linear_weight(nb::handle w_obj, nb::handle panels_obj) {
  HostArray w(w_obj, kOp, "weight"), panels(panels_obj, kOp, "panels");
  if ((w.kind() != Kind::f32 && w.kind() != Kind::f64) || w.ndim() != 2)
    throw TypeError(std::string(kOp) + ": weight must be a 2-D float32 or float64 array, got " + w.dtype_name() +
                    " " + w.shape_str());
  PackLinearParams p;
  p.dtype = w.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.A = w.shape(0), p.K = w.shape(1);
  const int64_t panel = kLinearPanelBytes / w.itemsize();
  check(w, "weight", w.kind(), {p.A, p.K});
  check(panels, "panels", w.kind(), {(p.A + panel - 1) / panel, p.K, panel});
  if (panels.readonly() || panels.may_overlap(w))
    throw ValueError(std::string(kOp) + ": panels must be writeable and apart from weight");
  p.w = w.data(), p.panels = panels.data();
  nb::gil_scoped_release release;
  pack_linear_weight_cpu(p);
}

}  // namespace

void register_linear(nb::module_& m) {
  m.def("pack_linear_weight", &pack_linear_weight, nb::arg("weight"), nb::arg("panels"),
        "Private: a Linear weight [A, K] into the kernel's panels (see attnkit._linear.PackedWeight).");
  m.def("linear", &linear, nb::arg("x"), nb::arg("weight"), nb::arg("bias").none(), nb::arg("out"),
        nb::arg("packed") = false, nb::arg("tanh") = false,
        "Private: y = x weight^T + bias (tanh of it with tanh=True) for the few rows of a decoder step "
        "(weight packed: see attnkit._linear.PackedWeight).");
}

}  // namespace attnkit::bindings
