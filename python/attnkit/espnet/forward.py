"""Forward attention (Zhang et al. 2018, for TTS): AttForward and AttForwardTA (spec 2.13, 2.14).

Both compute AttLoc's masked (optionally windowed) softmax w0 with ``fused_additive_step`` (values
of width 0: the context is needed only after the recursion), then

    w' = (m1 * a + m2 * shift(a)) * w0,   shift(a)[t] = a[t-1], shift(a)[0] = 0
    w  = max(w', 1e-6) / max(sum_t max(w', 1e-6), 1e-12)        (clamp, then L1 normalisation)
    context = sum over ALL T frames of w * enc

ESPnet's clamp gives padded frames a weight >= 1e-6/Z, so they (and whatever garbage the encoder
left there) leak into the context and the next state: results depend on the padding (spec 4.7).
``fix_padding_leak=True`` zeroes padded frames after the clamp and sums valid frames only.
"""
from __future__ import annotations

import numpy as np

from attnkit._arrays import describe, host_float_array
from attnkit.espnet._base import (AttentionOutput, ForwardTAState, Prepared, check_array, one_hot_first, peak_of,
                                  sigmoid, window_bounds)
from attnkit.espnet._kernels import weighted_sum
from attnkit.espnet.location import LocationAware


def shift_right(a: np.ndarray) -> np.ndarray:
    """shift(a)[:, t] = a[:, t-1], shift(a)[:, 0] = 0."""
    s = np.zeros_like(a)
    s[:, 1:] = a[:, :-1]
    return s


class ForwardFamily(LocationAware):
    """Shared by AttForward, AttForwardTA and GDCAttLoc: one-hot initial state, clamp and
    normalisation, the leaky context."""

    default_scaling = 1.0

    def __init__(self, eprojs: int, dunits: int, att_dim: int, aconv_chans: int, aconv_filts: int, *,
                 fix_padding_leak: bool = False, dtype=np.float32, params=None, seed=None):
        self.fix_padding_leak = bool(fix_padding_leak)
        super().__init__(eprojs, dunits, att_dim, aconv_chans, aconv_filts, dtype=dtype, params=params, seed=seed)

    def _initial(self, prepared, rows):
        return one_hot_first(rows.shape[0], prepared.frames, self._dtype)

    def _masked_weights(self, prepared, rows, dec_z, a, scaling, bounds=None) -> np.ndarray:
        """w0 ``[N, T]``: the location-aware softmax, without its context."""
        return self._location_step(prepared, rows, dec_z, a, scaling, bounds, values=prepared.enc[:, :, :0])[1]

    def _finish(self, prepared, rows, w: np.ndarray):
        """Clamp, L1-normalise and take the context: (context [N, E], weights [N, T])."""
        w = np.maximum(w, 1e-6)
        if self.fix_padding_leak:
            w[np.arange(prepared.frames)[None, :] >= prepared.lengths[rows][:, None]] = 0
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        return weighted_sum(w, prepared.enc, prepared.lengths, rows, valid_only=self.fix_padding_leak), w

    def _repr_dims(self):
        return {**super()._repr_dims(), "fix_padding_leak": self.fix_padding_leak}


class AttForward(ForwardFamily):
    """Forward attention: w' = (a + shift(a)) * w0 (module docstring), a = the previous weights
    (one-hot on frame 0 when None). No factory atype (TTS only).

    Parameters: as AttLoc. Runs on ``fused_additive_step`` for w0.
    """

    espnet_name = "AttForward"

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 1.0, rows=None,
             last_attended_idx=None, backward_window: int = 1, forward_window: int = 3) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``[N, T]`` or None (one-hot); rows ``[N]``;
        the window arguments as AttLoc.step. Returns context ``[N, E]``, weights ``[N, T]``,
        state = weights, peak ``[N]``."""
        op = "AttForward.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        a = self._bt_state(op, state, prepared, rows, lambda: self._initial(prepared, rows))
        bounds = None if last_attended_idx is None else window_bounds(
            op, last_attended_idx, backward_window, forward_window, prepared.lengths[rows], prepared.frames)
        w0 = self._masked_weights(prepared, rows, dec_z, a, s, bounds)
        ctx, w = self._finish(prepared, rows, (a + shift_right(a)) * w0)
        return AttentionOutput(ctx, w, w, peak_of(w))


class AttForwardTA(ForwardFamily):
    """Forward attention with a transition agent: w' = (u a + (1 - u) shift(a)) * w0, then
    u' = sigmoid(mlp_ta([context ; out_prev ; dec_z])) (that column order: E, O, Dz).

    ESPnet keeps u as hidden module state (0.5 after reset); here it travels in the state:
    ``ForwardTAState(weights, u [N, 1])``, None meaning (one-hot, 0.5). Parameters: as AttLoc plus
    ``mlp_ta.weight [1, E+Dz+O]`` and ``mlp_ta.bias [1]``. Runs on ``fused_additive_step`` for w0.
    """

    espnet_name = "AttForwardTA"

    def __init__(self, eunits: int, dunits: int, att_dim: int, aconv_chans: int, aconv_filts: int, odim: int, *,
                 fix_padding_leak: bool = False, dtype=np.float32, params=None, seed=None):
        self.odim = self._dims(odim=odim)["odim"]
        super().__init__(eunits, dunits, att_dim, aconv_chans, aconv_filts, fix_padding_leak=fix_padding_leak,
                         dtype=dtype, params=params, seed=seed)

    def _shapes_for(self):
        shapes = super()._shapes_for()
        shapes.update({"mlp_ta.weight": (1, self.eprojs + self.dunits + self.odim), "mlp_ta.bias": (1,)})
        return shapes

    def _initial(self, prepared, rows):
        return ForwardTAState(super()._initial(prepared, rows), np.full((rows.shape[0], 1), 0.5, self._dtype))

    def step(self, prepared: Prepared, dec_z=None, state=None, *, out_prev, scaling: float = 1.0, rows=None,
             last_attended_idx=None, backward_window: int = 1, forward_window: int = 3) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``ForwardTAState`` or None; out_prev ``[N, O]``
        the previous output frame; rows ``[N]``; the window arguments as AttLoc.step. Returns
        context ``[N, E]``, weights ``[N, T]``, state ``ForwardTAState(weights, u')``, peak ``[N]``."""
        op = "AttForwardTA.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        n = rows.shape[0]
        out_prev = host_float_array(op, "out_prev", out_prev, (2,))
        check_array(op, "out_prev", out_prev, (n, self.odim), self._dtype, "([N, odim] previous output)")
        if state is None:
            state = self._initial(prepared, rows)
        elif not isinstance(state, ForwardTAState):
            raise TypeError(f"{op}: state must be a ForwardTAState(weights, u) or None, got {describe(state)}")
        a = check_array(op, "state.weights", state.weights, (n, prepared.frames), self._dtype,
                        "([N, T] previous weights)")
        u = check_array(op, "state.u", state.u, (n, 1), self._dtype, "([N, 1] transition-agent probability)")
        bounds = None if last_attended_idx is None else window_bounds(
            op, last_attended_idx, backward_window, forward_window, prepared.lengths[rows], prepared.frames)
        w0 = self._masked_weights(prepared, rows, dec_z, a, s, bounds)
        ctx, w = self._finish(prepared, rows, (u * a + (1 - u) * shift_right(a)) * w0)
        x = np.concatenate([ctx, out_prev, dec_z], axis=1)
        u_new = sigmoid(x @ self._p("mlp_ta.weight").T + self._p("mlp_ta.bias"))
        return AttentionOutput(ctx, w, ForwardTAState(w, u_new), peak_of(w))

    def _repr_dims(self):
        d = super()._repr_dims()
        return {"eunits": d.pop("eprojs"), **d, "odim": self.odim}
