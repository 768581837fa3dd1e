// Binding of the CTC prefix-score recursion (CtcPrefixParams): x [T, M], label_col int64 [N, C],
// blank_col int64 [N], r_sum and r_blank [T, N], repeat bool [N, C]; r [T, 2, N, C] and psi [N, C]
// written; C-contiguous, the float arrays of one dtype. Private: attnkit.asr.ctc_prefix calls it.
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/ctc_prefix.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "ctc_prefix_scores";

void ctc_prefix_scores(nb::handle x_obj, nb::handle label_obj, nb::handle blank_obj, nb::handle sum_obj,
                       nb::handle rb_obj, nb::handle repeat_obj, bool first_label, int64_t start, int64_t end,
                       double logzero, nb::handle r_obj, nb::handle psi_obj) {
  HostArray x(x_obj, kOp, "x"), label_col(label_obj, kOp, "label_col"), blank_col(blank_obj, kOp, "blank_col"),
      r_sum(sum_obj, kOp, "r_sum"), r_blank(rb_obj, kOp, "r_blank"), repeat(repeat_obj, kOp, "repeat"),
      r(r_obj, kOp, "r"), psi(psi_obj, kOp, "psi");
  if ((x.kind() != Kind::f32 && x.kind() != Kind::f64) || x.ndim() != 2)
    throw TypeError(std::string(kOp) + ": x must be a 2-D float32 or float64 array [T, M]");
  if (label_col.ndim() != 2) throw ValueError(std::string(kOp) + ": label_col must be 2-D [N, C]");
  CtcPrefixParams p;
  p.dtype = x.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.T = x.shape(0), p.M = x.shape(1), p.N = label_col.shape(0), p.C = label_col.shape(1);
  // The message reads "<name> must be an aligned, C-contiguous array of <of> dtype and shape ...".
  auto check = [&](const HostArray& a, const char* name, Kind kind, const std::vector<int64_t>& shape, const char* of) {
    require_c_array(a, kOp, name, kind, shape, of);
  };
  check(x, "x", x.kind(), {p.T, p.M}, "float32 or float64");
  check(label_col, "label_col", Kind::i64, {p.N, p.C}, "int64");
  check(blank_col, "blank_col", Kind::i64, {p.N}, "int64");
  check(r_sum, "r_sum", x.kind(), {p.T, p.N}, "x's");
  check(r_blank, "r_blank", x.kind(), {p.T, p.N}, "x's");
  check(repeat, "repeat", Kind::boolean, {p.N, p.C}, "bool");
  check(r, "r", x.kind(), {p.T, 2, p.N, p.C}, "x's");
  check(psi, "psi", x.kind(), {p.N, p.C}, "x's");
  if (r.readonly() || psi.readonly()) throw ValueError(std::string(kOp) + ": r and psi must be writeable");
  p.x = x.data(), p.r_sum = r_sum.data(), p.r_blank = r_blank.data();
  p.label_col = static_cast<const int64_t*>(label_col.data());
  p.blank_col = static_cast<const int64_t*>(blank_col.data());
  p.repeat = static_cast<const uint8_t*>(repeat.data());
  p.first_label = first_label, p.start = start, p.end = end, p.logzero = logzero;
  p.r = r.data(), p.psi = psi.data();
  nb::gil_scoped_release release;
  ctc_prefix_scores_cpu(p);
}

}  // namespace

void register_ctc_prefix(nb::module_& m) {
  m.def("ctc_prefix_scores", &ctc_prefix_scores, nb::arg("x"), nb::arg("label_col"), nb::arg("blank_col"),
        nb::arg("r_sum"), nb::arg("r_blank"), nb::arg("repeat"), nb::arg("first_label"), nb::arg("start"),
        nb::arg("end"), nb::arg("logzero"), nb::arg("r"), nb::arg("psi"),
        "Private: the CTC prefix-score recursion (attnkit.asr.ctc_prefix.prefix_scores).");
}

}  // namespace attnkit::bindings
