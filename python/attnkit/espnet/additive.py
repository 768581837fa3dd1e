"""AttAdd (atype ``add``): Bahdanau additive attention (spec 2.3)."""
from __future__ import annotations

import numpy as np

from attnkit.espnet._base import AttentionOutput, EncoderProjection, Prepared, peak_of


class AttAdd(EncoderProjection):
    """e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T)), w = softmax(scaling * e).

    Parameters: ``mlp_enc.weight [A, E]``, ``mlp_enc.bias [A]``, ``mlp_dec.weight [A, Dz]``,
    ``gvec.weight [1, A]``, ``gvec.bias [1]``. The previous state is ignored (as in ESPnet); the
    new state is w. Runs on ``fused_additive_step`` without a location term; on the GPU when
    ``prepare`` got a GPU array (dec_z then a GPU array too).
    """

    espnet_name = "AttAdd"

    def __init__(self, eprojs: int, dunits: int, att_dim: int, *, dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim)
        self.eprojs, self.dunits, self.att_dim = d["eprojs"], d["dunits"], d["att_dim"]
        E, Dz, A = self.eprojs, self.dunits, self.att_dim
        self._setup({"mlp_enc.weight": (A, E), "mlp_enc.bias": (A,), "mlp_dec.weight": (A, Dz),
                     "gvec.weight": (1, A), "gvec.bias": (1,)}, dtype, params, seed)

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ignored; rows ``[N]`` (default arange(B)).
        Returns context ``[N, E]``, weights ``[N, T]``, state = weights, peak ``[N]``."""
        op = "AttAdd.step"
        if getattr(prepared, "on_device", False):
            g = self._begin_device(op, prepared, dec_z, rows)
            ctx, w, peak = g.additive(None, None, None, None, self._scaling(op, scaling))
            return AttentionOutput(ctx, w, w, peak)
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        ctx, w = self._additive(prepared, rows, self._query(dec_z), None, None, None, None, s)
        return AttentionOutput(ctx, w, w, peak_of(w))
