"""AttLoc2D (atype ``location2d``): location attention over the last W weight vectors (spec 2.6)."""
from __future__ import annotations

import numpy as np

from attnkit.espnet._base import AttentionOutput, EncoderProjection, Prepared, check_array, peak_of
from attnkit.espnet.location import loc_shapes


class AttLoc2D(EncoderProjection):
    """As AttLoc, but the convolution (height W = att_win) reads the window of the last W weight
    vectors ``[N, W, T]`` (oldest first; W copies of U when None).

    Parameters: as AttLoc with ``loc_conv.weight [C, 1, W, 2F+1]``. The new state drops the oldest
    row and appends this step's weights. Runs on ``fused_additive_step`` with R = W.
    """

    espnet_name = "AttLoc2D"
    state_kind = "window_bwt"

    def __init__(self, eprojs: int, dunits: int, att_dim: int, att_win: int, aconv_chans: int, aconv_filts: int,
                 *, dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim, att_win=att_win, aconv_chans=aconv_chans,
                       aconv_filts=aconv_filts)
        self.eprojs, self.dunits, self.att_dim, self.att_win = d["eprojs"], d["dunits"], d["att_dim"], d["att_win"]
        self.aconv_chans, self.aconv_filts = d["aconv_chans"], d["aconv_filts"]
        self._setup(loc_shapes(self.eprojs, self.dunits, self.att_dim, self.aconv_chans, 2 * self.aconv_filts + 1,
                               self.att_win), dtype, params, seed)

    def _initial(self, prepared, rows):
        return np.repeat(self._uniform(prepared, rows)[:, None, :], self.att_win, axis=1)

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``[N, W, T]`` or None; rows ``[N]``.
        Returns context ``[N, E]``, weights ``[N, T]``, state ``[N, W, T]`` (= state[:, 1:] then
        weights), peak ``[N]``."""
        op = "AttLoc2D.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        if state is None:
            a = self._initial(prepared, rows)
        else:
            a = check_array(op, "state", state, (rows.shape[0], self.att_win, prepared.frames), self._dtype,
                            "([N, att_win, T] window of previous weights)")
        ctx, w = self._additive(prepared, rows, self._query(dec_z), a, self._loc_conv(), self._p("mlp_att.weight"),
                                None, s)
        return AttentionOutput(ctx, w, np.concatenate([a[:, 1:], w[:, None]], axis=1), peak_of(w))

    def _repr_dims(self):
        return {**super()._repr_dims(), "att_win": self.att_win, "aconv_chans": self.aconv_chans,
                "aconv_filts": self.aconv_filts}
