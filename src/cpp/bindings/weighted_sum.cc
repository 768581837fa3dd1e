// Binding of the attention context of given weights (WeightedSumParams): w [N, T] and values
// [B, T, Ev] float32 or float64, rows int64 [N], lengths int64 [B] or None (every frame), out
// [N, Ev] of the same dtype, C-contiguous, out overlapping no input. Private:
// attnkit.espnet._kernels.weighted_sum calls it for NumPy arrays.
#include <optional>
#include <string>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/weighted_sum.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "weighted_sum";

void weighted_sum(nb::handle w_obj, nb::handle values_obj, nb::handle rows_obj, nb::handle lengths_obj,
                  nb::handle out_obj) {
  HostArray w(w_obj, kOp, "w"), values(values_obj, kOp, "values"), rows(rows_obj, kOp, "rows"),
      out(out_obj, kOp, "out");
  if ((values.kind() != Kind::f32 && values.kind() != Kind::f64) || values.ndim() != 3)
    throw TypeError(std::string(kOp) + ": values must be a 3-D float32 or float64 array [B, T, Ev], got " +
                    values.dtype_name() + " " + values.shape_str());
  WeightedSumParams p;
  p.dtype = values.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.B = values.shape(0), p.T = values.shape(1), p.Ev = values.shape(2);
  if (rows.ndim() != 1)
    throw ValueError(std::string(kOp) + ": rows must be a 1-D int64 array [N], got " + rows.dtype_name() + " " +
                     rows.shape_str());
  p.N = rows.shape(0);
  require_c_array(values, kOp, "values", values.kind(), {p.B, p.T, p.Ev}, "its");
  require_c_array(rows, kOp, "rows", Kind::i64, {p.N}, "int64");
  require_c_array(w, kOp, "w", values.kind(), {p.N, p.T}, "values'");
  require_c_array(out, kOp, "out", values.kind(), {p.N, p.Ev}, "values'");
  if (out.readonly()) throw ValueError(std::string(kOp) + ": out must be writeable");
  if (out.may_overlap(w) || out.may_overlap(values))
    throw ValueError(std::string(kOp) + ": out must not overlap w or values");
  p.w = w.data(), p.values = values.data(), p.out = out.data();
  p.rows = static_cast<const int64_t*>(rows.data());
  std::optional<HostArray> lengths;
  if (!lengths_obj.is_none()) {
    lengths.emplace(lengths_obj, kOp, "lengths");
    require_c_array(*lengths, kOp, "lengths", Kind::i64, {p.B}, "int64");
    p.lengths = static_cast<const int64_t*>(lengths->data());
  }
  nb::gil_scoped_release release;
  weighted_sum_cpu(p);
}

}  // namespace

void register_weighted_sum(nb::module_& m) {
  m.def("weighted_sum", &weighted_sum, nb::arg("w"), nb::arg("values"), nb::arg("rows"), nb::arg("lengths").none(),
        nb::arg("out"),
        "Private: out[n] = sum_t w[n, t] values[rows[n], t] over t < lengths[rows[n]] (every frame when lengths "
        "is None) (attnkit.espnet._kernels.weighted_sum).");
}

}  // namespace attnkit::bindings
