"""AttCov (atype ``coverage``): coverage attention (See et al.), spec 2.5."""
from __future__ import annotations

import numpy as np

from attnkit.espnet._base import AttentionOutput, CoverageState, EncoderProjection, Prepared, check_array, peak_of
from attnkit._arrays import describe


def coverage_total(op: str, module, state, prepared: Prepared, rows: np.ndarray) -> np.ndarray:
    """The coverage sum ``[N, T]`` from a CoverageState, or U (ESPnet's ``[U]``) when None."""
    if state is None:
        return module._uniform(prepared, rows)
    if not isinstance(state, CoverageState):
        raise TypeError(f"{op}: state must be a CoverageState(total [N, T]) or None (the ESPnet list form "
                        f"is for attnkit.espnet.compat), got {describe(state)}")
    return check_array(op, "state.total", state.total, (rows.shape[0], prepared.frames), module.dtype,
                       "([N, T] coverage sum)")


def coverage_total_on_device(op: str, module, state, g):
    """coverage_total for a GPU step ``g``: the state's total checked there, or U on its device."""
    if state is None:
        return module._uniform(g.prepared, g.rows)
    if not isinstance(state, CoverageState):
        raise TypeError(f"{op}: state must be a CoverageState(total [N, T]) or None, got {describe(state)}")
    return g.state(state.total, "state.total")


class AttCov(EncoderProjection):
    """e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T + cov wvec.weight^T + wvec.bias)),
    cov = the sum of all previous weights and of the initial U.

    Parameters: ``mlp_enc.weight [A, E]``, ``mlp_enc.bias [A]``, ``mlp_dec.weight [A, Dz]``,
    ``wvec.weight [A, 1]``, ``wvec.bias [A]``, ``gvec.weight [1, A]``, ``gvec.bias [1]``.
    State: ``CoverageState(total)``. Runs on ``fused_additive_step`` with a 1-tap convolution
    (conv_w = 1), conv_proj = wvec.weight and loc_bias = wvec.bias.
    """

    espnet_name = "AttCov"
    state_kind = "coverage_list"

    def __init__(self, eprojs: int, dunits: int, att_dim: int, *, dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim)
        self.eprojs, self.dunits, self.att_dim = d["eprojs"], d["dunits"], d["att_dim"]
        E, Dz, A = self.eprojs, self.dunits, self.att_dim
        self._setup({"mlp_enc.weight": (A, E), "mlp_enc.bias": (A,), "mlp_dec.weight": (A, Dz),
                     "wvec.weight": (A, 1), "wvec.bias": (A,), "gvec.weight": (1, A), "gvec.bias": (1,)},
                    dtype, params, seed)
        self._one_tap = np.ones((1, 1, 1), self._dtype)

    def _initial(self, prepared, rows):
        return CoverageState(self._uniform(prepared, rows))

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state: ``CoverageState`` or None (total = U);
        rows ``[N]``. Returns context ``[N, E]``, weights ``[N, T]``,
        state = CoverageState(total + weights), peak ``[N]``."""
        op = "AttCov.step"
        if getattr(prepared, "on_device", False):
            g = self._begin_device(op, prepared, dec_z, rows)
            s = self._scaling(op, scaling)
            total = coverage_total_on_device(op, self, state, g)
            ctx, w, peak = g.additive(total, g.weight("one_tap"), g.weight("wvec.weight"), g.weight("wvec.bias"), s)
            return AttentionOutput(ctx, w, CoverageState(g.added(total, w)), peak)
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        total = coverage_total(op, self, state, prepared, rows)
        ctx, w = self._additive(prepared, rows, self._query(dec_z), total[:, None, :], self._one_tap,
                                self._p("wvec.weight"), self._p("wvec.bias"), s)
        return AttentionOutput(ctx, w, CoverageState(total + w), peak_of(w))
