// Binding of the CTC prefix-score recursion on GPU arrays (CtcPrefixParams): imports the DLPack
// capsules, checks shapes, dtype, layout and device, and launches on the caller's stream.
// Private: attnkit.asr.ctc_prefix.prefix_scores calls it for CuPy arrays.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <vector>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "bindings/device_array.h"
#include "bindings/register.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "ctc_prefix_scores";

void ctc_prefix_scores_cuda(nb::ndarray<> xs_in, nb::ndarray<> xb_in, nb::ndarray<> phi_in, bool first_label,
                            int64_t start, int64_t end, double logzero, nb::ndarray<> r_in, nb::ndarray<> psi_in,
                            std::uintptr_t stream) {
  const DeviceArray xs(xs_in, kOp, "xs"), xb(xb_in, kOp, "x_blank"), phi(phi_in, kOp, "log_phi"), r(r_in, kOp, "r"),
      psi(psi_in, kOp, "psi");
  CtcPrefixParams p;
  if (!xs.float_dtype(&p.dtype) || (p.dtype != DType::f32 && p.dtype != DType::f64))
    throw TypeError(std::string(kOp) + ": xs must be float32 or float64 on the GPU, got " + xs.dtype_name());
  if (xs.ndim() != 3) throw ValueError(std::string(kOp) + ": xs must be 3-D [T, N, C], got " + xs.shape_str());
  p.T = xs.shape(0), p.N = xs.shape(1), p.C = xs.shape(2);
  const std::vector<std::pair<const DeviceArray*, std::vector<int64_t>>> arrays = {
      {&xs, {p.T, p.N, p.C}}, {&xb, {p.T, p.N}}, {&phi, {p.T, p.N, p.C}}, {&r, {p.T, 2, p.N, p.C}}, {&psi, {p.N, p.C}}};
  for (const auto& [a, shape] : arrays) {
    a->require_shape(shape);
    DType t;
    if (!a->float_dtype(&t) || t != p.dtype)
      throw TypeError(std::string(kOp) + ": " + a->name() + " must have xs's dtype " + dtype_name(p.dtype) +
                      ", got " + a->dtype_name());
    if (!a->c_contiguous()) throw ValueError(std::string(kOp) + ": " + a->name() + " must be C-contiguous on the GPU");
    if (a->device() != xs.device())
      throw ValueError(std::string(kOp) + ": every array must be on xs's device (cuda:" + std::to_string(xs.device()) +
                       "), got " + a->name() + " on cuda:" + std::to_string(a->device()));
  }
  for (const DeviceArray* out : {&r, &psi})
    for (const auto& [a, shape] : arrays)
      if (a != out && out->may_overlap(*a))
        throw ValueError(std::string(kOp) + ": " + out->name() + " must not share memory with " + a->name());
  p.xs = xs.data(), p.x_blank = xb.data(), p.log_phi = phi.data();
  p.first_label = first_label, p.start = start, p.end = end, p.logzero = logzero;
  p.r = r.data(), p.psi = psi.data();
  nb::gil_scoped_release release;
  cuda::ctc_prefix_scores(p, cuda::Launch{xs.device(), stream});
}

}  // namespace

void register_ctc_prefix_cuda(nb::module_& m) {
  m.def("ctc_prefix_scores_cuda", &ctc_prefix_scores_cuda, nb::arg("xs"), nb::arg("x_blank"), nb::arg("log_phi"),
        nb::arg("first_label"), nb::arg("start"), nb::arg("end"), nb::arg("logzero"), nb::arg("r"), nb::arg("psi"),
        nb::arg("stream"), "Private: the CTC prefix-score recursion on GPU arrays (attnkit.asr.ctc_prefix).");
}

}  // namespace attnkit::bindings
