"""AttDot (atype ``dot``): dot-product attention with tanh on both projections (spec 2.2)."""
from __future__ import annotations

import numpy as np

from attnkit.espnet._base import AttentionOutput, EncoderProjection, Prepared, peak_of
from attnkit._linear import linear
from attnkit.espnet._kernels import dot_product_step


class AttDot(EncoderProjection):
    """e[n,t] = <tanh(enc W_enc^T + b_enc)[rows[n],t], tanh(dec_z W_dec^T + b_dec)[n]>,
    w = softmax(scaling * e) over the valid frames (no 1/sqrt(A): the default scaling is 2).

    Parameters: ``mlp_enc.weight [A, E]``, ``mlp_enc.bias [A]``, ``mlp_dec.weight [A, Dz]``,
    ``mlp_dec.bias [A]``. The previous state is ignored (as in ESPnet); the new state is w.
    Runs on the fused step kernel's dot-product energies with K = the cached tanh projection
    (``prepared.keys``, a [B, T, A] view of [B, A, T] storage), V = enc.
    """

    espnet_name = "AttDot"

    def __init__(self, eprojs: int, dunits: int, att_dim: int, *, dtype=np.float32, params=None, seed=None):
        d = self._dims(eprojs=eprojs, dunits=dunits, att_dim=att_dim)
        self.eprojs, self.dunits, self.att_dim = d["eprojs"], d["dunits"], d["att_dim"]
        E, Dz, A = self.eprojs, self.dunits, self.att_dim
        self._setup({"mlp_enc.weight": (A, E), "mlp_enc.bias": (A,), "mlp_dec.weight": (A, Dz),
                     "mlp_dec.bias": (A,)}, dtype, params, seed)

    def _precompute(self, enc, lengths):
        # Stored [B, A, T], kept as its [B, T, A] view: the kernel's dot-product energies then run
        # over frames in vectors with no sums across lanes (N=10, T=1000 kernel: 278 -> 217 us on
        # one thread, benchmarks/NOTES.md additive 21).
        keys = linear(enc, self._packed("mlp_enc.weight"), self._p("mlp_enc.bias"), tanh=True)
        return {"keys": np.ascontiguousarray(keys.transpose(0, 2, 1)).transpose(0, 2, 1)}

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ignored; rows ``[N]`` (default arange(B)).
        Returns context ``[N, E]``, weights ``[N, T]``, state = weights, peak ``[N]``."""
        op = "AttDot.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        q = linear(dec_z, self._packed("mlp_dec.weight"), self._p("mlp_dec.bias"), tanh=True)
        n = rows.shape[0]
        ctx = np.empty((n, prepared.enc.shape[2]), self._dtype)
        w = np.empty((n, prepared.frames), self._dtype)
        dot_product_step(prepared.keys, prepared.enc, prepared.lengths, rows, q, s, ctx, w)
        return AttentionOutput(ctx, w, w, peak_of(w))
