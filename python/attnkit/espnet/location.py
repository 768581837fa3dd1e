"""AttLoc (atype ``location``): Chorowski's location-aware attention, ESPnet's main ASR attention."""
from __future__ import annotations

import numpy as np

from attnkit._core import UnsupportedError
from attnkit.espnet._base import AttentionOutput, EncoderProjection, Prepared, peak_of, window_bounds


def loc_shapes(E: int, Dz: int, A: int, C: int, K: int, R: int = 1) -> dict[str, tuple[int, ...]]:
    """Parameters of AttLoc and its relatives (AttCovLoc, AttLoc2D with R = att_win, the Forward
    family, GDC)."""
    return {"mlp_enc.weight": (A, E), "mlp_enc.bias": (A,), "mlp_dec.weight": (A, Dz),
            "mlp_att.weight": (A, C), "loc_conv.weight": (C, 1, R, K), "gvec.weight": (1, A), "gvec.bias": (1,)}


class LocationAware(EncoderProjection):
    """Constructor and energy shared by AttLoc, AttCovLoc, the Forward family and GDCAttLoc:
    e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T + LocConv(a) W_att^T))."""

    def __init__(self, eprojs: int, dunits: int, att_dim: int, aconv_chans: int, aconv_filts: int, *,
                 dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim, aconv_chans=aconv_chans,
                       aconv_filts=aconv_filts)
        self.eprojs, self.dunits, self.att_dim = d["eprojs"], d["dunits"], d["att_dim"]
        self.aconv_chans, self.aconv_filts = d["aconv_chans"], d["aconv_filts"]
        self._setup(self._shapes_for(), dtype, params, seed)

    def _shapes_for(self) -> dict[str, tuple[int, ...]]:
        return loc_shapes(self.eprojs, self.dunits, self.att_dim, self.aconv_chans, 2 * self.aconv_filts + 1)

    def _initial(self, prepared, rows):
        return self._uniform(prepared, rows)

    def _location_step(self, prepared, rows, dec_z, a, scaling, bounds=None, values=None):
        """(context, weights) with the location term computed from a ``[N, T]``."""
        return self._additive(prepared, rows, self._query(dec_z), a[:, None, :], self._loc_conv(),
                              self._p("mlp_att.weight"), None, scaling, values=values, bounds=bounds)

    def _repr_dims(self):
        return {**super()._repr_dims(), "aconv_chans": self.aconv_chans, "aconv_filts": self.aconv_filts}


class AttLoc(LocationAware):
    """Location-aware attention (spec 2.4).

    e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T + LocConv(a) W_att^T)), w = softmax(s e),
    a = the previous weights (U, uniform over the valid frames, when None).

    Parameters: ``mlp_enc.weight [A, E]``, ``mlp_enc.bias [A]``, ``mlp_dec.weight [A, Dz]``,
    ``mlp_att.weight [A, C]``, ``loc_conv.weight [C, 1, 1, 2F+1]``, ``gvec.weight [1, A]``,
    ``gvec.bias [1]``. Runs on ``fused_additive_step``; on the GPU when ``prepare`` got a GPU
    array (dec_z and state then GPU arrays too; no attention window there yet).
    """

    espnet_name = "AttLoc"

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None,
             last_attended_idx=None, backward_window: int = 1, forward_window: int = 3) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state: previous weights ``[N, T]`` or None (U);
        rows ``[N]`` (default arange(B)). ``last_attended_idx`` (an int, N = 1 as in ESPnet, or an
        int array ``[N]``) keeps only frames [idx - backward_window, idx + forward_window).
        Returns context ``[N, E]``, weights ``[N, T]``, state = weights, peak ``[N]``."""
        op = "AttLoc.step"
        if getattr(prepared, "on_device", False):
            g = self._begin_device(op, prepared, dec_z, rows)
            s = self._scaling(op, scaling)
            if last_attended_idx is not None:
                raise UnsupportedError(f"{op}: last_attended_idx (the attention window) runs on the CPU only so far")
            a = self._uniform(prepared, g.rows) if state is None else g.state(state, "state")
            ctx, w, peak = g.additive(a, g.weight("loc_conv.weight")[:, 0], g.weight("mlp_att.weight"), None, s)
            return AttentionOutput(ctx, w, w, peak)
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        a = self._bt_state(op, state, prepared, rows, lambda: self._initial(prepared, rows))
        bounds = None if last_attended_idx is None else window_bounds(
            op, last_attended_idx, backward_window, forward_window, prepared.lengths[rows], prepared.frames)
        ctx, w = self._location_step(prepared, rows, dec_z, a, s, bounds)
        return AttentionOutput(ctx, w, w, peak_of(w))
