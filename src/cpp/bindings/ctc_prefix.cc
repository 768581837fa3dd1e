// Binding of the CTC prefix-score recursion (CtcPrefixParams): xs [T, N, C], x_blank [T, N],
// log_phi [T, N, C], r [T, 2, N, C] and psi [N, C] written; C-contiguous, one float dtype.
// Private: attnkit.asr.ctc_prefix.prefix_scores calls it.
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/ctc_prefix.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "ctc_prefix_scores";

void ctc_prefix_scores(nb::handle xs_obj, nb::handle xb_obj, nb::handle phi_obj, bool first_label, int64_t start,
                       int64_t end, double logzero, nb::handle r_obj, nb::handle psi_obj) {
  HostArray xs(xs_obj, kOp, "xs"), xb(xb_obj, kOp, "x_blank"), phi(phi_obj, kOp, "log_phi"), r(r_obj, kOp, "r"),
      psi(psi_obj, kOp, "psi");
  if ((xs.kind() != Kind::f32 && xs.kind() != Kind::f64) || xs.ndim() != 3)
    throw TypeError(std::string(kOp) + ": xs must be a 3-D float32 or float64 array");
  CtcPrefixParams p;
  p.dtype = xs.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.T = xs.shape(0), p.N = xs.shape(1), p.C = xs.shape(2);
  auto check = [&](const HostArray& a, const char* name, const std::vector<int64_t>& shape) {
    require_c_array(a, kOp, name, xs.kind(), shape, "xs's");
  };
  check(xs, "xs", {p.T, p.N, p.C});
  check(xb, "x_blank", {p.T, p.N});
  check(phi, "log_phi", {p.T, p.N, p.C});
  check(r, "r", {p.T, 2, p.N, p.C});
  check(psi, "psi", {p.N, p.C});
  if (r.readonly() || psi.readonly()) throw ValueError(std::string(kOp) + ": r and psi must be writeable");
  p.xs = xs.data(), p.x_blank = xb.data(), p.log_phi = phi.data();
  p.first_label = first_label, p.start = start, p.end = end, p.logzero = logzero;
  p.r = r.data(), p.psi = psi.data();
  nb::gil_scoped_release release;
  ctc_prefix_scores_cpu(p);
}

}  // namespace

void register_ctc_prefix(nb::module_& m) {
  m.def("ctc_prefix_scores", &ctc_prefix_scores, nb::arg("xs"), nb::arg("x_blank"), nb::arg("log_phi"),
        nb::arg("first_label"), nb::arg("start"), nb::arg("end"), nb::arg("logzero"), nb::arg("r"), nb::arg("psi"),
        "Private: the CTC prefix-score recursion (attnkit.asr.ctc_prefix.prefix_scores).");
}

}  // namespace attnkit::bindings
