"""Drop-in, ESPnet-shaped wrappers around attnkit's ESPnet attention classes (no PyTorch needed).

Each class takes ESPnet's constructor arguments and defaults, holds weights under ESPnet's
state_dict names (``load_state_dict`` accepts the ``att.0.`` / ``dec.att.0.`` /
``decoder.att_list.0.`` prefixes), and is called like ESPnet's ``forward``:

    att = AttLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts)
    att.load_state_dict(checkpoint_attention_weights)
    att.reset()                                    # per utterance, as ESPnet does
    c, w = att(enc_hs_pad, enc_hs_len, dec_z, None)
    c, w = att(enc_hs_pad, enc_hs_len, dec_z, w)

returning ESPnet's ``(context, state)`` structures (spec 1.1): tensor ``[B, T]``, window
``[B, W, T]``, coverage list (appended IN PLACE, as ESPnet), LocRec ``(w, (h, c))``, list of heads.
Inputs are NumPy arrays or anything ``np.asarray`` takes (CPU torch tensors); outputs are NumPy.

ESPnet's caching is reproduced: the encoder projection (and the lengths) are taken on the first
call after construction or ``reset()``; later calls read only the batch size from ``enc_hs_pad``
(pass a new utterance without ``reset()`` and you get the old one, as in ESPnet), except with
``han_mode=True``, which re-projects every call. The ``Prepared`` cache and the underlying attnkit
module are exposed as ``.prepared`` and ``.core`` for code that wants the explicit API.

Differences from ESPnet, all on inputs where ESPnet fails or returns NaN: float64 modules work with
``att_prev=None`` (ESPnet builds a float32 initial state and raises); ``scaling <= 0``, zero
lengths and T != max(lengths) raise ValueError; garbage that is not finite (NaN, inf) in padded
frames does not turn contexts into NaN (except in the Forward family, whose weights really reach
the padding). Fixes for ESPnet bugs are keyword options, off by default: ``masked_max_pool``
(AttLocRec) and ``fix_padding_leak`` (AttForward, AttForwardTA, GDCAttLoc).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnkit._arrays import describe, is_device_array
from attnkit.espnet import (additive, coverage, coverage_location, dot, forward, gdc, location, location2d,
                            location_recurrent, multi_head, no_att)
from attnkit.espnet._base import CoverageState, ForwardTAState, LocRecState, Prepared, uniform_weights
from attnkit.espnet._kernels import weighted_sum

__all__ = [
    "NoAtt", "AttDot", "AttAdd", "AttLoc", "AttCov", "AttLoc2D", "AttLocRec", "AttCovLoc", "AttMultiHeadDot",
    "AttMultiHeadAdd", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc", "AttForward", "AttForwardTA", "GDCAttLoc",
]


class EspnetModule:
    """Base of the wrappers: weights, ``reset()``, ESPnet's caching, argument conversion."""

    def __init__(self, core, han_mode: bool = False):
        self.core = core
        self.han_mode = bool(han_mode)
        self.reset()

    def __getattr__(self, name: str):
        # ESPnet's dimension attributes (dunits, att_dim, aheads, ...) live on the core module.
        if name.startswith("_") or name == "core":
            raise AttributeError(name)
        return getattr(self.core, name)

    def __repr__(self) -> str:
        return f"attnkit.espnet.compat.{type(self).__name__}(core={self.core!r}, han_mode={self.han_mode})"

    @property
    def _op(self) -> str:
        return f"{type(self).__name__}.__call__"

    def reset(self) -> None:
        """Forgets the cached encoder projection and lengths (call it per utterance, as ESPnet)."""
        self._prepared: Prepared | None = None

    @property
    def prepared(self) -> Prepared | None:
        """The current cache (attnkit's ``Prepared``), None after ``reset()``."""
        return self._prepared

    @property
    def dtype(self) -> np.dtype:
        return self.core.dtype

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.core.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], *, prefix: str | None = None) -> None:
        """Loads ESPnet weights (see ``attnkit.espnet.EspnetAttention.load_state_dict``) and resets."""
        self.core.load_state_dict(state_dict, prefix=prefix)
        self.reset()

    def _host(self, name: str, x) -> np.ndarray:
        """x as a NumPy array; GPU arrays are refused (these wrappers keep ESPnet's host-side
        state; the GPU path is the attnkit.espnet classes' prepare / step)."""
        if is_device_array(x):
            raise TypeError(f"{self._op}: {name} must be a host array (NumPy or a CPU tensor): the ESPnet-style "
                            f"wrappers run on the CPU; for GPU arrays use attnkit.espnet.{type(self.core).__name__}'s "
                            f"prepare() and step(), got {describe(x)}")
        return np.asarray(x)

    def _prepare(self, enc_hs_pad, enc_hs_len) -> Prepared:
        enc = self._host("enc_hs_pad", enc_hs_pad)
        if self._prepared is None or self.han_mode:
            # ESPnet builds its mask once per reset(), even in han_mode: keep the first lengths.
            lengths = enc_hs_len if self._prepared is None else self._prepared.lengths
            self._prepared = self.core.prepare(enc, lengths)
        elif enc.ndim < 1 or enc.shape[0] != self._prepared.batch:
            raise ValueError(f"{self._op}: enc_hs_pad must have the cached batch size {self._prepared.batch} "
                             f"(call reset() for a new utterance batch), got {describe(enc)}")
        return self._prepared

    def _dec_z(self, dec_z, batch: int):
        """ESPnet views dec_z as (B, dunits)."""
        if dec_z is None:
            return None
        z = self._host("dec_z", dec_z)
        if z.size != batch * self.core.dunits:
            raise ValueError(f"{self._op}: dec_z must have {batch} x {self.core.dunits} elements (B x dunits), "
                             f"got shape {z.shape}")
        return z.reshape(batch, self.core.dunits)

    def _windowed_step(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling, last_attended_idx,
                       backward_window, forward_window):
        """(context, weights) of a class whose state is its weights [B, T] and which takes
        ESPnet's attention window (AttLoc, AttForward)."""
        p = self._prepare(enc_hs_pad, enc_hs_len)
        out = self.core.step(p, self._dec_z(dec_z, p.batch), self._bt("att_prev", att_prev, p), scaling=scaling,
                             last_attended_idx=last_attended_idx, backward_window=backward_window,
                             forward_window=forward_window)
        return out.context, out.weights

    def _bt(self, name: str, x, prepared: Prepared):
        """A (B, T) tensor state; ESPnet views it as (B, 1, 1, T)."""
        if x is None:
            return None
        if isinstance(x, (list, tuple)):
            raise TypeError(f"{self._op}: {name} must be an array of shape (B, T), got {describe(x)}")
        arr = self._host(name, x)
        b, t = prepared.batch, prepared.frames
        return arr.reshape(b, t) if arr.size == b * t else arr


class NoAtt(EspnetModule):
    """ESPnet's ``NoAtt()``: the mean of the valid frames; ``att_prev`` passes through."""

    def __init__(self, *, dtype=np.float32):
        super().__init__(no_att.NoAtt(dtype=dtype))

    def reset(self) -> None:
        super().reset()
        self.c = None

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev):
        """Returns ``(c (B, E), att_prev)``; with ``att_prev=None`` the context is computed and
        cached and the state is U. As ESPnet: a first call after reset() with a non-None att_prev
        returns c = None; U is built in float32 and cast (float64 weights are float32-rounded)."""
        if att_prev is None:
            prepared = self.core.prepare(self._host("enc_hs_pad", enc_hs_pad), enc_hs_len)
            att_prev = uniform_weights(prepared.lengths, prepared.frames, np.float32).astype(self.dtype)
            self.c = weighted_sum(att_prev, prepared.enc, prepared.lengths, np.arange(prepared.batch), True)
        return self.c, att_prev

    forward = __call__


class AttDot(EspnetModule):
    """ESPnet's ``AttDot(eprojs, dunits, att_dim, han_mode=False)``; returns ``(c, w)``."""

    def __init__(self, eprojs, dunits, att_dim, han_mode=False, *, dtype=np.float32):
        super().__init__(dot.AttDot(eprojs, dunits, att_dim, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling=2.0):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        out = self.core.step(p, self._dec_z(dec_z, p.batch), None, scaling=scaling)
        return out.context, out.weights

    forward = __call__


class AttAdd(AttDot):
    """ESPnet's ``AttAdd(eprojs, dunits, att_dim, han_mode=False)``; returns ``(c, w)``."""

    def __init__(self, eprojs, dunits, att_dim, han_mode=False, *, dtype=np.float32):
        EspnetModule.__init__(self, additive.AttAdd(eprojs, dunits, att_dim, dtype=dtype), han_mode)


class AttLoc(EspnetModule):
    """ESPnet's ``AttLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False)``;
    returns ``(c, w)``."""

    def __init__(self, eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False, *, dtype=np.float32):
        super().__init__(location.AttLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling=2.0, last_attended_idx=None,
                 backward_window=1, forward_window=3):
        return self._windowed_step(enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling, last_attended_idx,
                                   backward_window, forward_window)

    forward = __call__


class AttCov(EspnetModule):
    """ESPnet's ``AttCov(eprojs, dunits, att_dim, han_mode=False)``; returns ``(c, att_prev_list)``
    with this step's weights appended to the caller's list IN PLACE (a new ``[U, w]`` when None)."""

    def __init__(self, eprojs, dunits, att_dim, han_mode=False, *, dtype=np.float32):
        super().__init__(coverage.AttCov(eprojs, dunits, att_dim, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev_list, scaling=2.0):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        if att_prev_list is None:
            att_prev_list = [self.core.initial_state(p).total]
            state = CoverageState(att_prev_list[0])
        elif not isinstance(att_prev_list, list) or not att_prev_list:
            raise TypeError(f"{self._op}: att_prev_list must be a non-empty list of (B, T) arrays or None, "
                            f"got {describe(att_prev_list)}")
        else:
            state = CoverageState(sum(np.asarray(a) for a in att_prev_list))  # ESPnet's sum, same order
        out = self.core.step(p, self._dec_z(dec_z, p.batch), state, scaling=scaling)
        att_prev_list.append(out.weights)
        return out.context, att_prev_list

    forward = __call__


class AttCovLoc(AttCov):
    """ESPnet's ``AttCovLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False)``;
    returns ``(c, att_prev_list)``, the list appended IN PLACE as in AttCov."""

    def __init__(self, eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False, *, dtype=np.float32):
        EspnetModule.__init__(self, coverage_location.AttCovLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts,
                                                                dtype=dtype), han_mode)


class AttLoc2D(EspnetModule):
    """ESPnet's ``AttLoc2D(eprojs, dunits, att_dim, att_win, aconv_chans, aconv_filts, han_mode=False)``;
    returns ``(c, att_prev (B, att_win, T))``, this step's weights in the last row."""

    def __init__(self, eprojs, dunits, att_dim, att_win, aconv_chans, aconv_filts, han_mode=False, *,
                 dtype=np.float32):
        super().__init__(location2d.AttLoc2D(eprojs, dunits, att_dim, att_win, aconv_chans, aconv_filts,
                                             dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling=2.0):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        state = None if att_prev is None else np.asarray(att_prev)
        out = self.core.step(p, self._dec_z(dec_z, p.batch), state, scaling=scaling)
        return out.context, out.state

    forward = __call__


class AttLocRec(EspnetModule):
    """ESPnet's ``AttLocRec(eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False)``;
    returns ``(c, (w, (h, c_lstm)))``. ``masked_max_pool=True`` fixes ESPnet's padding-dependent
    max-pool (see attnkit.espnet.AttLocRec)."""

    def __init__(self, eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False, *, dtype=np.float32,
                 masked_max_pool=False):
        super().__init__(location_recurrent.AttLocRec(eprojs, dunits, att_dim, aconv_chans, aconv_filts,
                                                      masked_max_pool=masked_max_pool, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev_states, scaling=2.0):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        state = None
        if att_prev_states is not None:
            try:
                w, (h, c) = att_prev_states
            except (TypeError, ValueError):
                raise TypeError(f"{self._op}: att_prev_states must be (w, (h, c)) or None, "
                                f"got {describe(att_prev_states)}") from None
            state = LocRecState(self._bt("att_prev_states[0]", w, p), np.asarray(h), np.asarray(c))
        out = self.core.step(p, self._dec_z(dec_z, p.batch), state, scaling=scaling)
        return out.context, (out.state.weights, (out.state.h, out.state.c))

    forward = __call__


class _MultiHeadModule(EspnetModule):
    """Multi-head wrappers: the state is a list of H (B, T) arrays."""

    def _heads_in(self, att_prev, p: Prepared):
        if att_prev is None:
            return None
        H = self.core.aheads
        if not isinstance(att_prev, (list, tuple)) or len(att_prev) != H:
            raise TypeError(f"{self._op}: att_prev must be a list of {H} (B, T) arrays (one per head) or None, "
                            f"got {describe(att_prev)}")
        return np.stack([self._bt(f"att_prev[{h}]", a, p) for h, a in enumerate(att_prev)], axis=1)

    def _call(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        # Only the location heads read att_prev; Dot and Add ignore it, as in ESPnet.
        state = self._heads_in(att_prev, p) if isinstance(self.core, multi_head.AttMultiHeadLoc) else None
        out = self.core.step(p, self._dec_z(dec_z, p.batch), state, scaling=scaling)
        return out.context, [out.weights[:, h].copy() for h in range(self.core.aheads)]


class AttMultiHeadDot(_MultiHeadModule):
    """ESPnet's ``AttMultiHeadDot(eprojs, dunits, aheads, att_dim_k, att_dim_v, han_mode=False)``;
    returns ``(c, [w_0, ..., w_{H-1}])``. ``scaling`` is accepted and ignored (1/sqrt(A_k)), as in
    ESPnet; so is ``att_prev``."""

    def __init__(self, eprojs, dunits, aheads, att_dim_k, att_dim_v, han_mode=False, *, dtype=np.float32):
        super().__init__(multi_head.AttMultiHeadDot(eprojs, dunits, aheads, att_dim_k, att_dim_v, dtype=dtype),
                         han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, **kwargs):
        return self._call(enc_hs_pad, enc_hs_len, dec_z, att_prev, None)

    forward = __call__


class AttMultiHeadAdd(AttMultiHeadDot):
    """ESPnet's ``AttMultiHeadAdd(eprojs, dunits, aheads, att_dim_k, att_dim_v, han_mode=False)``;
    as AttMultiHeadDot (``scaling`` and ``att_prev`` ignored)."""

    def __init__(self, eprojs, dunits, aheads, att_dim_k, att_dim_v, han_mode=False, *, dtype=np.float32):
        EspnetModule.__init__(self, multi_head.AttMultiHeadAdd(eprojs, dunits, aheads, att_dim_k, att_dim_v,
                                                               dtype=dtype), han_mode)


class AttMultiHeadLoc(_MultiHeadModule):
    """ESPnet's ``AttMultiHeadLoc(eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans,
    aconv_filts, han_mode=False)``; returns ``(c, [w_h])`` and honours ``scaling`` (default 2.0)."""

    def __init__(self, eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans, aconv_filts, han_mode=False, *,
                 dtype=np.float32):
        super().__init__(multi_head.AttMultiHeadLoc(eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans,
                                                    aconv_filts, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling=2.0, **kwargs):
        return self._call(enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling)

    forward = __call__


class AttMultiHeadMultiResLoc(_MultiHeadModule):
    """ESPnet's ``AttMultiHeadMultiResLoc(eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans,
    aconv_filts, han_mode=False)``; returns ``(c, [w_h])``; ``scaling`` ignored (1/sqrt(A_k))."""

    def __init__(self, eprojs, dunits, aheads, att_dim_k, att_dim_v, aconv_chans, aconv_filts, han_mode=False, *,
                 dtype=np.float32):
        super().__init__(multi_head.AttMultiHeadMultiResLoc(eprojs, dunits, aheads, att_dim_k, att_dim_v,
                                                            aconv_chans, aconv_filts, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, **kwargs):
        return self._call(enc_hs_pad, enc_hs_len, dec_z, att_prev, None)

    forward = __call__


class AttForward(EspnetModule):
    """ESPnet's ``AttForward(eprojs, dunits, att_dim, aconv_chans, aconv_filts)`` (no han_mode);
    returns ``(c, w)``. ``fix_padding_leak=True`` keeps padded frames at weight 0."""

    def __init__(self, eprojs, dunits, att_dim, aconv_chans, aconv_filts, *, dtype=np.float32,
                 fix_padding_leak=False):
        super().__init__(forward.AttForward(eprojs, dunits, att_dim, aconv_chans, aconv_filts,
                                            fix_padding_leak=fix_padding_leak, dtype=dtype))

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling=1.0, last_attended_idx=None,
                 backward_window=1, forward_window=3):
        return self._windowed_step(enc_hs_pad, enc_hs_len, dec_z, att_prev, scaling, last_attended_idx,
                                   backward_window, forward_window)

    forward = __call__


class AttForwardTA(EspnetModule):
    """ESPnet's ``AttForwardTA(eunits, dunits, att_dim, aconv_chans, aconv_filts, odim)``; returns
    ``(c, w)`` and keeps the transition-agent probability in ``trans_agent_prob`` (0.5 after
    ``reset()``, then a (B, 1) array), as ESPnet."""

    def __init__(self, eunits, dunits, att_dim, aconv_chans, aconv_filts, odim, *, dtype=np.float32,
                 fix_padding_leak=False):
        super().__init__(forward.AttForwardTA(eunits, dunits, att_dim, aconv_chans, aconv_filts, odim,
                                              fix_padding_leak=fix_padding_leak, dtype=dtype))

    def reset(self) -> None:
        super().reset()
        self.trans_agent_prob = 0.5

    def __call__(self, enc_hs_pad, enc_hs_len, dec_z, att_prev, out_prev, scaling=1.0, last_attended_idx=None,
                 backward_window=1, forward_window=3):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        a = self._bt("att_prev", att_prev, p)
        if a is None:
            a = self.core.initial_state(p).weights
        u = self.trans_agent_prob
        u = np.full((p.batch, 1), u, self.dtype) if np.ndim(u) == 0 else np.asarray(u)
        out = self.core.step(p, self._dec_z(dec_z, p.batch), ForwardTAState(a, u), out_prev=np.asarray(out_prev),
                             scaling=scaling, last_attended_idx=last_attended_idx, backward_window=backward_window,
                             forward_window=forward_window)
        self.trans_agent_prob = out.state.u
        return out.context, out.weights

    forward = __call__


class GDCAttLoc(EspnetModule):
    """ESPnet's ``GDCAttLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False)``;
    called as ``(enc_hs_pad, enc_hs_len, trans_token, dec_z, att_prev, ...)``, returns ``(c, w)``.
    As ESPnet, the dynamic filter (``last_attended_idx``) zeroes the caller's ``att_prev`` in place."""

    def __init__(self, eprojs, dunits, att_dim, aconv_chans, aconv_filts, han_mode=False, *, dtype=np.float32,
                 fix_padding_leak=False):
        super().__init__(gdc.GDCAttLoc(eprojs, dunits, att_dim, aconv_chans, aconv_filts,
                                       fix_padding_leak=fix_padding_leak, dtype=dtype), han_mode)

    def __call__(self, enc_hs_pad, enc_hs_len, trans_token, dec_z, att_prev, scaling=1.0, last_attended_idx=None,
                 backward_window=1, forward_window=3):
        p = self._prepare(enc_hs_pad, enc_hs_len)
        a = self._bt("att_prev", att_prev, p)
        out = self.core.step(p, self._dec_z(dec_z, p.batch), a, trans_token=np.asarray(trans_token),
                             scaling=scaling, last_attended_idx=last_attended_idx, backward_window=backward_window,
                             forward_window=forward_window)
        if last_attended_idx is not None and isinstance(a, np.ndarray) and a.flags.writeable:
            lo, hi = last_attended_idx - backward_window, last_attended_idx + forward_window
            if lo > 0:
                a[:, :lo] = 0
            if hi < a.shape[1]:
                a[:, hi:] = 0
        return out.context, out.weights

    forward = __call__
