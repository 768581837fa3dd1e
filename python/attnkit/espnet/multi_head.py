"""The multi-head ESPnet attentions: AttMultiHeadDot, AttMultiHeadAdd, AttMultiHeadLoc and
AttMultiHeadMultiResLoc (spec 2.9-2.12).

Per head h: K_h = enc W_k,h^T and V_h = enc W_v,h^T, cached by ``prepare`` as keys
``[B, H, T, A_k]`` and values ``[B, H, T, A_v]`` (views of head-major storage, so that each
head's ``keys[:, h]`` is one contiguous block); q_h = dec_z W_q,h^T + b_q,h; the head contexts
c_h ``[N, A_v]`` are concatenated in head order and projected: context = [c_0; ...] W_o^T.
"""
from __future__ import annotations

import math

import numpy as np

from attnkit._arrays import c_aligned
from attnkit.espnet._base import AttentionOutput, EspnetAttention, Prepared, check_array, peak_of
from attnkit._linear import PackedWeight, linear
from attnkit.espnet._kernels import dot_product_step, fused_additive_step


class MultiHead(EspnetAttention):
    """Shared parameters, cache and step of the four multi-head classes."""

    state_kind = "heads_list"
    default_scaling = None
    _energy = "add"  # "dot", "add" or "loc"

    def __init__(self, eprojs: int, dunits: int, aheads: int, att_dim_k: int, att_dim_v: int,
                 aconv_chans: int | None = None, aconv_filts: int | None = None, *, dtype=np.float32,
                 params=None, seed=None):
        conv = {} if self._energy != "loc" else {"aconv_chans": aconv_chans, "aconv_filts": aconv_filts}
        d = self._dims(eprojs=eprojs, dunits=dunits, aheads=aheads, att_dim_k=att_dim_k, att_dim_v=att_dim_v, **conv)
        self.eprojs, self.dunits, self.aheads = d["eprojs"], d["dunits"], d["aheads"]
        self.att_dim_k, self.att_dim_v = d["att_dim_k"], d["att_dim_v"]
        self.aconv_chans, self.aconv_filts = d.get("aconv_chans"), d.get("aconv_filts")
        E, Dz, H, Ak, Av = self.eprojs, self.dunits, self.aheads, self.att_dim_k, self.att_dim_v
        shapes: dict[str, tuple[int, ...]] = {}
        for h in range(H):
            shapes.update({f"mlp_q.{h}.weight": (Ak, Dz), f"mlp_q.{h}.bias": (Ak,), f"mlp_k.{h}.weight": (Ak, E),
                           f"mlp_v.{h}.weight": (Av, E)})
            if self._energy != "dot":
                shapes.update({f"gvec.{h}.weight": (1, Ak), f"gvec.{h}.bias": (1,)})
            if self._energy == "loc":
                shapes.update({f"loc_conv.{h}.weight": (self.aconv_chans, 1, 1, 2 * self._half_width(h) + 1),
                               f"mlp_att.{h}.weight": (Ak, self.aconv_chans)})
        shapes["mlp_o.weight"] = (E, H * Av)
        self._stack = (None, None)
        self._setup(shapes, dtype, params, seed)

    def _half_width(self, h: int) -> int:
        return self.aconv_filts

    def _stacked(self) -> dict[str, np.ndarray]:
        """The per-head projections stacked into one matrix each (packed for ``linear``), rebuilt
        when the weights change."""
        if self._stack[0] is not self._params:
            H, p = self.aheads, self._params
            self._stack = (self._params, {
                "q": PackedWeight(np.concatenate([p[f"mlp_q.{h}.weight"] for h in range(H)])),  # [H*Ak, Dz]
                "qb": np.concatenate([p[f"mlp_q.{h}.bias"] for h in range(H)]),                  # [H*Ak]
                "k": PackedWeight(np.concatenate([p[f"mlp_k.{h}.weight"] for h in range(H)])),  # [H*Ak, E]
                "v": PackedWeight(np.concatenate([p[f"mlp_v.{h}.weight"] for h in range(H)])),  # [H*Av, E]
            })
        return self._stack[1]

    def _heads(self, x: np.ndarray, d: int, frames_inner: bool = False) -> np.ndarray:
        """[B, T, H*d] -> [B, H, T, d], a view of head-major storage [H, B, T, d] (with
        ``frames_inner``, [H, B, d, T]).

        Head-major, so that each head's block ``x[:, h]`` is one contiguous block, as the step
        kernel requires; frames inner for the dot-product keys, whose energies the kernel then
        runs over frames in vectors.
        """
        B, T, _ = x.shape
        heads = x.reshape(B, T, self.aheads, d)
        order = (2, 0, 3, 1) if frames_inner else (2, 0, 1, 3)
        storage = np.ascontiguousarray(heads.transpose(*order))
        storage.flags.writeable = False
        return storage.transpose(1, 0, 3, 2) if frames_inner else storage.transpose(1, 0, 2, 3)

    def _precompute(self, enc, lengths):
        st = self._stacked()
        dot = self._energy == "dot"
        keys = self._heads(linear(enc, st["k"], tanh=dot), self.att_dim_k, frames_inner=dot)
        return {"keys": keys, "values": self._heads(linear(enc, st["v"]), self.att_dim_v)}

    def _initial(self, prepared, rows):
        if self._energy != "loc":
            return None
        return np.repeat(self._uniform(prepared, rows)[:, None, :], self.aheads, axis=1)

    def _multi_head_step(self, op: str, prepared, dec_z, state, scaling, rows) -> AttentionOutput:
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = 1.0 / math.sqrt(self.att_dim_k) if scaling is None else self._scaling(op, scaling)
        n, H, T = rows.shape[0], self.aheads, prepared.frames
        st = self._stacked()
        q = linear(dec_z, st["q"], st["qb"], tanh=self._energy == "dot").reshape(n, H, self.att_dim_k)
        if self._energy == "dot":
            ctx = np.empty((n, H, self.att_dim_v), self._dtype)
            w = np.empty((n, H, T), self._dtype)
            dot_product_step(prepared.keys, prepared.values, prepared.lengths, rows, q, s, ctx, w)
        else:
            a = None
            if self._energy == "loc":
                a = self._initial(prepared, rows) if state is None else check_array(
                    op, "state", state, (n, H, T), self._dtype, "([N, H, T] previous weights of every head)")
                a = c_aligned(a.transpose(1, 0, 2))[:, :, None, :]  # [H, N, 1, T]; the state may be any view
            # Head-major buffers: every array the kernel sees is one contiguous block per head.
            q = np.ascontiguousarray(q.transpose(1, 0, 2))  # [H, N, A_k]
            ctx = np.empty((H, n, self.att_dim_v), self._dtype)
            w = np.empty((H, n, T), self._dtype)
            for h in range(H):
                conv = (None, None) if a is None else (self._p(f"loc_conv.{h}.weight")[:, 0],
                                                       self._p(f"mlp_att.{h}.weight"))
                fused_additive_step(prepared.keys[:, h], prepared.values[:, h], prepared.lengths, rows, q[h],
                                    None if a is None else a[h], conv[0], conv[1], None,
                                    self._p(f"gvec.{h}.weight")[0], s, ctx[h], w[h])
            ctx, w = ctx.transpose(1, 0, 2), np.ascontiguousarray(w.transpose(1, 0, 2))
        context = linear(ctx.reshape(n, H * self.att_dim_v), self._packed("mlp_o.weight"))
        return AttentionOutput(context, w, w, peak_of(w))

    def _repr_dims(self):
        d = {"eprojs": self.eprojs, "dunits": self.dunits, "aheads": self.aheads, "att_dim_k": self.att_dim_k,
             "att_dim_v": self.att_dim_v}
        if self._energy == "loc":
            d.update(aconv_chans=self.aconv_chans, aconv_filts=self.aconv_filts)
        return d


class AttMultiHeadDot(MultiHead):
    """Per head: K_h = tanh(enc W_k,h^T), e_h = <K_h, tanh(q_h)>, w_h = softmax(s e_h),
    s = 1/sqrt(A_k) by default (ESPnet ignores ``scaling``; attnkit honours an explicit one).

    Parameters per head h: ``mlp_q.h.weight [A_k, Dz]``, ``mlp_q.h.bias [A_k]``,
    ``mlp_k.h.weight [A_k, E]``, ``mlp_v.h.weight [A_v, E]``; shared ``mlp_o.weight [E, H*A_v]``.
    The state is ignored; the new state is the weights ``[N, H, T]``. Runs on the step kernel's
    dot-product energies, one call per head, over keys cached frames-inner.
    """

    espnet_name = "AttMultiHeadDot"
    _energy = "dot"

    def __init__(self, eprojs: int, dunits: int, aheads: int, att_dim_k: int, att_dim_v: int, *,
                 dtype=np.float32, params=None, seed=None):
        super().__init__(eprojs, dunits, aheads, att_dim_k, att_dim_v, dtype=dtype, params=params, seed=seed)

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float | None = None,
             rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ignored; rows ``[N]``. Returns context
        ``[N, E]``, weights ``[N, H, T]``, state = weights, peak ``[N]``."""
        return self._multi_head_step("AttMultiHeadDot.step", prepared, dec_z, state, scaling, rows)


class AttMultiHeadAdd(MultiHead):
    """Per head: e_h = gvec_h(tanh(K_h + q_h)), w_h = softmax(s e_h), s = 1/sqrt(A_k) by default
    (ESPnet ignores ``scaling``; attnkit honours an explicit one).

    Parameters: as AttMultiHeadDot plus ``gvec.h.weight [1, A_k]``, ``gvec.h.bias [1]``. The state
    is ignored; the new state is the weights ``[N, H, T]``. Runs on ``fused_additive_step`` per
    head (P = K_h, values = V_h).
    """

    espnet_name = "AttMultiHeadAdd"
    _energy = "add"

    def __init__(self, eprojs: int, dunits: int, aheads: int, att_dim_k: int, att_dim_v: int, *,
                 dtype=np.float32, params=None, seed=None):
        super().__init__(eprojs, dunits, aheads, att_dim_k, att_dim_v, dtype=dtype, params=params, seed=seed)

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float | None = None,
             rows=None) -> AttentionOutput:
        """As AttMultiHeadDot.step."""
        return self._multi_head_step("AttMultiHeadAdd.step", prepared, dec_z, state, scaling, rows)


class AttMultiHeadLoc(MultiHead):
    """Per head: e_h = gvec_h(tanh(K_h + LocConv_h(a_h) W_att,h^T + q_h)), w_h = softmax(s e_h)
    with s = ``scaling`` (default 2.0: the only multi-head class that honours it in ESPnet).

    Parameters: as AttMultiHeadAdd plus ``loc_conv.h.weight [C, 1, 1, 2F+1]`` and
    ``mlp_att.h.weight [A_k, C]``. State: the previous weights ``[N, H, T]`` (U for every head when
    None). Runs on ``fused_additive_step`` per head.
    """

    espnet_name = "AttMultiHeadLoc"
    default_scaling = 2.0
    _energy = "loc"

    def __init__(self, eprojs: int, dunits: int, aheads: int, att_dim_k: int, att_dim_v: int, aconv_chans: int,
                 aconv_filts: int, *, dtype=np.float32, params=None, seed=None):
        super().__init__(eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans, aconv_filts, dtype=dtype,
                         params=params, seed=seed)

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``[N, H, T]`` or None; rows ``[N]``. Returns
        context ``[N, E]``, weights ``[N, H, T]``, state = weights, peak ``[N]``."""
        return self._multi_head_step("AttMultiHeadLoc.step", prepared, dec_z, state, scaling, rows)


class AttMultiHeadMultiResLoc(AttMultiHeadLoc):
    """As AttMultiHeadLoc, but head h's kernel has half-width F_h = floor(F (h+1) / H) (F_h = 0
    gives a 1-tap kernel; C is the same for every head) and s = 1/sqrt(A_k) by default (ESPnet
    ignores ``scaling``; attnkit honours an explicit one).
    """

    espnet_name = "AttMultiHeadMultiResLoc"
    default_scaling = None

    def _half_width(self, h: int) -> int:
        return self.aconv_filts * (h + 1) // self.aheads

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float | None = None,
             rows=None) -> AttentionOutput:
        """As AttMultiHeadLoc.step."""
        return self._multi_head_step("AttMultiHeadMultiResLoc.step", prepared, dec_z, state, scaling, rows)
