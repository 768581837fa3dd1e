"""AttLocRec (atype ``location_recurrent``): location attention with an LSTM over a max-pooled
location feature (spec 2.7)."""
from __future__ import annotations

import numpy as np

from attnkit._arrays import describe
from attnkit._cells import lstm_update
from attnkit._linear import linear
from attnkit.espnet._base import AttentionOutput, EncoderProjection, LocRecState, Prepared, check_array, peak_of
from attnkit.espnet._kernels import location_conv


class AttLocRec(EncoderProjection):
    """v = max_t ReLU(LocConv(a)) ``[N, C]``; (h', c') = LSTMCell(v, (h, c)) without bias (gate
    order i, f, g, o); e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T + h')).

    Parameters: ``mlp_enc.weight [A, E]``, ``mlp_enc.bias [A]``, ``mlp_dec.weight [A, Dz]``,
    ``loc_conv.weight [C, 1, 1, 2F+1]``, ``att_lstm.weight_ih [4A, C]``, ``att_lstm.weight_hh [4A, A]``,
    ``gvec.weight [1, A]``, ``gvec.bias [1]``. State: ``LocRecState(weights, h, c)``; None means
    (U, 0, 0). Runs on ``fused_additive_step`` with q + h' as the query term and no location term.

    ESPnet max-pools over all T frames, padded ones included, so results depend on the amount of
    padding (spec 4.6). ``masked_max_pool=True`` pools over each row's valid frames only: padding
    invariant, but no longer ESPnet's numbers (off by default).
    """

    espnet_name = "AttLocRec"
    state_kind = "w_hc"

    def __init__(self, eprojs: int, dunits: int, att_dim: int, aconv_chans: int, aconv_filts: int, *,
                 masked_max_pool: bool = False, dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim, aconv_chans=aconv_chans,
                       aconv_filts=aconv_filts)
        self.eprojs, self.dunits, self.att_dim = d["eprojs"], d["dunits"], d["att_dim"]
        self.aconv_chans, self.aconv_filts = d["aconv_chans"], d["aconv_filts"]
        self.masked_max_pool = bool(masked_max_pool)
        E, Dz, A, C, K = self.eprojs, self.dunits, self.att_dim, self.aconv_chans, 2 * self.aconv_filts + 1
        self._setup({"mlp_enc.weight": (A, E), "mlp_enc.bias": (A,), "mlp_dec.weight": (A, Dz),
                     "loc_conv.weight": (C, 1, 1, K), "att_lstm.weight_ih": (4 * A, C),
                     "att_lstm.weight_hh": (4 * A, A), "gvec.weight": (1, A), "gvec.bias": (1,)},
                    dtype, params, seed)

    def _initial(self, prepared, rows):
        zeros = np.zeros((rows.shape[0], self.att_dim), self._dtype)
        return LocRecState(self._uniform(prepared, rows), zeros, zeros.copy())

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``LocRecState`` or None; rows ``[N]``.
        Returns context ``[N, E]``, weights ``[N, T]``, state ``LocRecState(weights, h', c')``,
        peak ``[N]``."""
        op = "AttLocRec.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        n, t = rows.shape[0], prepared.frames
        if state is None:
            state = self._initial(prepared, rows)
        elif not isinstance(state, LocRecState):
            raise TypeError(f"{op}: state must be a LocRecState(weights, h, c) or None (the ESPnet tuple "
                            f"(w, (h, c)) is for attnkit.espnet.compat), got {describe(state)}")
        a = check_array(op, "state.weights", state.weights, (n, t), self._dtype, "([N, T] previous weights)")
        h = check_array(op, "state.h", state.h, (n, self.att_dim), self._dtype, "([N, att_dim] LSTM output)")
        c = check_array(op, "state.c", state.c, (n, self.att_dim), self._dtype, "([N, att_dim] LSTM cell)")

        f = location_conv(a[:, None, :], self._p("loc_conv.weight")[:, 0])  # [N, C, T]
        np.maximum(f, 0, out=f)
        if self.masked_max_pool:  # ReLU output >= 0: 0 never wins
            f[np.broadcast_to((np.arange(t)[None, :] >= prepared.lengths[rows][:, None])[:, None], f.shape)] = 0
        v = f.max(axis=2)
        h_new, c_new = lstm_update(linear(h, self._packed("att_lstm.weight_hh")),
                                   linear(v, self._packed("att_lstm.weight_ih")), c)

        ctx, w = self._additive(prepared, rows, self._query(dec_z) + h_new, None, None, None, None, s)
        return AttentionOutput(ctx, w, LocRecState(w, h_new, c_new), peak_of(w))

    def _repr_dims(self):
        return {**super()._repr_dims(), "aconv_chans": self.aconv_chans, "aconv_filts": self.aconv_filts}
