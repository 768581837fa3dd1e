// Binding of the row-wise log_softmax (LogSoftmaxParams): x [N, V] float32 or float64 and out of
// the same dtype and shape (out may be x itself, any other overlap is refused), C-contiguous.
// Private: attnkit.asr.decoder.log_softmax calls it for NumPy arrays.
#include <string>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/log_softmax.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "log_softmax";

void log_softmax(nb::handle x_obj, nb::handle out_obj) {
  HostArray x(x_obj, kOp, "x"), out(out_obj, kOp, "out");
  if ((x.kind() != Kind::f32 && x.kind() != Kind::f64) || x.ndim() != 2)
    throw TypeError(std::string(kOp) + ": x must be a 2-D float32 or float64 array, got " + x.dtype_name() + " " +
                    x.shape_str());
  LogSoftmaxParams p;
  p.dtype = x.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.N = x.shape(0), p.V = x.shape(1);
  require_c_array(x, kOp, "x", x.kind(), {p.N, p.V}, "its");
  require_c_array(out, kOp, "out", x.kind(), {p.N, p.V}, "x's");
  if (out.readonly()) throw ValueError(std::string(kOp) + ": out must be writeable");
  if (out.data() != x.data() && out.may_overlap(x))
    throw ValueError(std::string(kOp) + ": out must be x itself or not overlap it");
  p.x = x.data(), p.y = out.data();
  nb::gil_scoped_release release;
  log_softmax_cpu(p);
}

}  // namespace

void register_log_softmax(nb::module_& m) {
  m.def("log_softmax", &log_softmax, nb::arg("x"), nb::arg("out"),
        "Private: log_softmax over the rows of x into out (attnkit.asr.decoder.log_softmax).");
}

}  // namespace attnkit::bindings
