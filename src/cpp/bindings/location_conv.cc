// Binding of ESPnet's location convolution (LocationConvParams): x [N, R, T] and w [C, R, K]
// (K odd) float32 or float64, out [N, C, T] of the same dtype, C-contiguous, out overlapping
// neither input. Private: attnkit.espnet._kernels.location_conv calls it for NumPy arrays.
#include <string>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/location_conv.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "location_conv";

void location_conv(nb::handle x_obj, nb::handle w_obj, nb::handle out_obj) {
  HostArray x(x_obj, kOp, "x"), w(w_obj, kOp, "w"), out(out_obj, kOp, "out");
  if ((x.kind() != Kind::f32 && x.kind() != Kind::f64) || x.ndim() != 3)
    throw TypeError(std::string(kOp) + ": x must be a 3-D float32 or float64 array [N, R, T], got " +
                    x.dtype_name() + " " + x.shape_str());
  if (w.ndim() != 3 || w.shape(1) != x.shape(1) || w.shape(2) % 2 == 0)
    throw ValueError(std::string(kOp) + ": w must be [C, R, K] with R = " + std::to_string(x.shape(1)) +
                     " (x's) and K odd (2F + 1 taps), got " + w.shape_str());
  LocationConvParams p;
  p.dtype = x.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.N = x.shape(0), p.R = x.shape(1), p.T = x.shape(2), p.C = w.shape(0), p.K = w.shape(2);
  require_c_array(x, kOp, "x", x.kind(), {p.N, p.R, p.T}, "its");
  require_c_array(w, kOp, "w", x.kind(), {p.C, p.R, p.K}, "x's");
  require_c_array(out, kOp, "out", x.kind(), {p.N, p.C, p.T}, "x's");
  if (out.readonly()) throw ValueError(std::string(kOp) + ": out must be writeable");
  if (out.may_overlap(x) || out.may_overlap(w)) throw ValueError(std::string(kOp) + ": out must not overlap x or w");
  p.x = x.data(), p.w = w.data(), p.f = out.data();
  nb::gil_scoped_release release;
  location_conv_cpu(p);
}

}  // namespace

void register_location_conv(nb::module_& m) {
  m.def("location_conv", &location_conv, nb::arg("x"), nb::arg("w"), nb::arg("out"),
        "Private: ESPnet's location convolution of x [N, R, T] by w [C, R, K] into out [N, C, T] "
        "(attnkit.espnet._kernels.location_conv).");
}

}  // namespace attnkit::bindings
