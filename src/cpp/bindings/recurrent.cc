// Binding of one LSTM or GRU layer direction (RecurrentLayerParams): gx [T, B, G*H], weight_hh
// packed [ceil(G*H/P), H, P] (attnkit._linear.PackedWeight.panels), bias_hh [G*H] or None, active
// int64 [T], out [T, B, H]; G = 4 for "lstm", 3 for "gru"; C-contiguous, one float dtype.
// Private: attnkit.asr.rnn.PackedRNN calls it.
#include <nanobind/stl/string.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/recurrent.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "recurrent_layer";

void check(const HostArray& a, const char* name, Kind kind, const std::vector<int64_t>& shape) {
  require_c_array(a, kOp, name, kind, shape, "the layer's");
}

void recurrent_layer(nb::handle gx_obj, nb::handle w_obj, nb::handle b_obj, nb::handle active_obj, bool reverse,
                     const std::string& cell, nb::handle out_obj) {
  if (cell != "lstm" && cell != "gru")
    throw ValueError(std::string(kOp) + ": cell must be 'lstm' or 'gru', got '" + cell + "'");
  HostArray gx(gx_obj, kOp, "gx"), w(w_obj, kOp, "weight_hh"), active(active_obj, kOp, "active"),
      out(out_obj, kOp, "out");
  if ((gx.kind() != Kind::f32 && gx.kind() != Kind::f64) || gx.ndim() != 3 || out.ndim() != 3)
    throw TypeError(std::string(kOp) + ": gx and out must be 3-D float32 or float64 arrays");
  RecurrentLayerParams p;
  p.dtype = gx.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.cell = cell == "lstm" ? RecurrentCell::lstm : RecurrentCell::gru;
  p.T = gx.shape(0), p.B = gx.shape(1), p.H = out.shape(2);
  const int64_t G = (cell == "lstm" ? 4 : 3) * p.H;
  const int64_t panel = kLinearPanelBytes / (gx.kind() == Kind::f32 ? 4 : 8);
  check(gx, "gx", gx.kind(), {p.T, p.B, G});
  p.w_hh_half = gx.kind() == Kind::f32 && w.kind() == Kind::f16;  // float16 panels (PackedWeight)
  check(w, "weight_hh", p.w_hh_half ? Kind::f16 : gx.kind(), {(G + panel - 1) / panel, p.H, panel});
  check(active, "active", Kind::i64, {p.T});
  check(out, "out", gx.kind(), {p.T, p.B, p.H});
  if (out.readonly()) throw ValueError(std::string(kOp) + ": out must be writeable");
  std::unique_ptr<HostArray> b;
  if (!b_obj.is_none()) {
    b = std::make_unique<HostArray>(b_obj, kOp, "bias_hh");
    check(*b, "bias_hh", gx.kind(), {G});
    p.b_hh = b->data();
  }
  p.gx = gx.data(), p.w_hh = w.data(), p.active = static_cast<const int64_t*>(active.data());
  p.reverse = reverse, p.out = out.data();
  nb::gil_scoped_release release;
  recurrent_layer_cpu(p);
}

}  // namespace

void register_recurrent(nb::module_& m) {
  m.def("recurrent_layer", &recurrent_layer, nb::arg("gx"), nb::arg("weight_hh"), nb::arg("bias_hh").none(),
        nb::arg("active"), nb::arg("reverse"), nb::arg("cell"), nb::arg("out"),
        "Private: one direction of an LSTM or GRU layer over a padded batch (attnkit.asr.rnn.PackedRNN).");
}

}  // namespace attnkit::bindings
