"""GDCAttLoc: global-duration-control attention (Singing-Tacotron), spec 2.15."""
from __future__ import annotations

import numpy as np

from attnkit._arrays import host_float_array
from attnkit.espnet._base import AttentionOutput, Prepared, peak_of, window_bounds
from attnkit.espnet.forward import ForwardFamily, shift_right


class GDCAttLoc(ForwardFamily):
    """w0 = AttLoc's masked softmax (no window on the energies); then with tau = trans_token

        w' = ((1 - shift(tau)) * shift(a) + tau * a) * w0

    and the Forward family's clamp, L1 normalisation and leaky context (``attnkit.espnet.forward``).
    ``last_attended_idx`` applies the dynamic filter to a (zero outside the window) after the
    convolution, on a copy (ESPnet zeroes the caller's tensor in place; the compat wrapper does).
    Parameters: as AttLoc plus ``pt_zero_linear.weight [1, A]`` and ``pt_zero_linear.bias [1]``,
    which ESPnet declares but never uses. No factory atype (singing synthesis only).
    """

    espnet_name = "GDCAttLoc"

    def _shapes_for(self):
        shapes = super()._shapes_for()
        shapes.update({"pt_zero_linear.weight": (1, self.att_dim), "pt_zero_linear.bias": (1,)})
        return shapes

    def step(self, prepared: Prepared, dec_z=None, state=None, *, trans_token, scaling: float = 1.0, rows=None,
             last_attended_idx=None, backward_window: int = 1, forward_window: int = 3) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state ``[N, T]`` or None (one-hot); trans_token
        ``[N, T]`` or ``[N, T, 1]`` transition probabilities; rows ``[N]``. Returns context ``[N, E]``,
        weights ``[N, T]``, state = weights, peak ``[N]``."""
        op = "GDCAttLoc.step"
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        n, t = rows.shape[0], prepared.frames
        tau = host_float_array(op, "trans_token", trans_token, (2, 3))
        if tau.shape not in ((n, t), (n, t, 1)):
            raise ValueError(f"{op}: trans_token must have shape ({n}, {t}) or ({n}, {t}, 1), got {tau.shape}")
        if tau.dtype != self._dtype:
            raise TypeError(f"{op}: trans_token must have dtype {self._dtype} (the module's dtype), got {tau.dtype}")
        tau = tau.reshape(n, t)
        a = self._bt_state(op, state, prepared, rows, lambda: self._initial(prepared, rows))
        bounds = window_bounds(op, last_attended_idx, backward_window, forward_window, np.full(n, t), t)
        w0 = self._masked_weights(prepared, rows, dec_z, a, s)
        if bounds is not None:
            keep = (np.arange(t) >= bounds[:, :1]) & (np.arange(t) < bounds[:, 1:])
            a = np.where(keep, a, 0).astype(self._dtype, copy=False)
        ctx, w = self._finish(prepared, rows, ((1 - shift_right(tau)) * shift_right(a) + tau * a) * w0)
        return AttentionOutput(ctx, w, w, peak_of(w))
