// Binding of one LSTM or GRU cell step from its gate pre-activations (CellUpdateParams):
// "lstm": g [N, 4H], gx [N, 4H] or None, state = c [N, H], outputs h_new and c_new [N, H];
// "gru": g = the recurrent part [N, 3H], gx = the input part [N, 3H], state = h [N, H], output
// h_new [N, H] (c_new None). C-contiguous, one float dtype, outputs apart from the inputs.
// Private: attnkit.asr.rnn.lstm_from_gates / gru_from_gates call it.
#include <nanobind/stl/string.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/cell_update.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "cell_update";

void check(const HostArray& a, const char* name, Kind kind, const std::vector<int64_t>& shape) {
  require_c_array(a, kOp, name, kind, shape, "the cell's");
}

void cell_update(const std::string& cell, nb::handle g_obj, nb::handle gx_obj, nb::handle state_obj,
                 nb::handle h_obj, nb::handle c_obj) {
  if (cell != "lstm" && cell != "gru")
    throw ValueError(std::string(kOp) + ": cell must be 'lstm' or 'gru', got '" + cell + "'");
  const bool lstm = cell == "lstm";
  HostArray g(g_obj, kOp, "g"), state(state_obj, kOp, lstm ? "c" : "h"), h_new(h_obj, kOp, "h_new");
  if ((g.kind() != Kind::f32 && g.kind() != Kind::f64) || g.ndim() != 2 || state.ndim() != 2)
    throw TypeError(std::string(kOp) + ": g and the state must be 2-D float32 or float64 arrays");
  CellUpdateParams p;
  p.dtype = g.kind() == Kind::f32 ? DType::f32 : DType::f64;
  p.cell = lstm ? RecurrentCell::lstm : RecurrentCell::gru;
  p.N = state.shape(0), p.H = state.shape(1);
  const std::vector<int64_t> gates{p.N, (lstm ? 4 : 3) * p.H}, rows{p.N, p.H};
  check(g, "g", g.kind(), gates);
  check(state, lstm ? "c" : "h", g.kind(), rows);
  check(h_new, "h_new", g.kind(), rows);
  std::vector<const HostArray*> inputs{&g, &state}, outputs{&h_new};
  std::unique_ptr<HostArray> gx, c_new;
  if (!gx_obj.is_none()) {
    gx = std::make_unique<HostArray>(gx_obj, kOp, "gx");
    check(*gx, "gx", g.kind(), gates);
    inputs.push_back(gx.get());
    p.gx = gx->data();
  } else if (!lstm) {
    throw ValueError(std::string(kOp) + ": a GRU cell needs gx (its input part), got None");
  }
  if (lstm) {
    if (c_obj.is_none()) throw ValueError(std::string(kOp) + ": an LSTM cell needs c_new, got None");
    c_new = std::make_unique<HostArray>(c_obj, kOp, "c_new");
    check(*c_new, "c_new", g.kind(), rows);
    outputs.push_back(c_new.get());
    p.c_new = c_new->data();
  }
  for (const HostArray* o : outputs) {
    if (o->readonly()) throw ValueError(std::string(kOp) + ": the outputs must be writeable");
    for (const HostArray* i : inputs)
      if (o->may_overlap(*i)) throw ValueError(std::string(kOp) + ": the outputs must not overlap the inputs");
  }
  if (outputs.size() == 2 && outputs[0]->may_overlap(*outputs[1]))
    throw ValueError(std::string(kOp) + ": h_new and c_new must not overlap");
  p.g = g.data(), p.state = state.data(), p.h_new = h_new.data();
  nb::gil_scoped_release release;
  cell_update_cpu(p);
}

}  // namespace

void register_cell_update(nb::module_& m) {
  m.def("cell_update", &cell_update, nb::arg("cell"), nb::arg("g"), nb::arg("gx").none(), nb::arg("state"),
        nb::arg("h_new"), nb::arg("c_new").none(),
        "Private: one LSTM or GRU cell step from its gate pre-activations (attnkit.asr.rnn).");
}

}  // namespace attnkit::bindings
