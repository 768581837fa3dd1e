"""NoAtt (atype ``noatt``): the mean of the valid encoder frames, the same at every step."""
from __future__ import annotations

import numpy as np

from attnkit.espnet._base import AttentionOutput, EspnetAttention, Prepared, check_array, uniform_weights
from attnkit.espnet._kernels import weighted_sum


class NoAtt(EspnetAttention):
    """No attention: context = sum_t U[t] enc[t], U uniform over the valid frames (spec 2.1).

    No parameters and no ``scaling``. ``prepare`` computes the per-utterance mean once; ``step``
    returns it for every row, with weights U and the state passed through (U when None).
    """

    espnet_name = "NoAtt"
    default_scaling = None

    def __init__(self, *, dtype=np.float32, params=None, seed=None):
        self._setup({}, dtype, params, seed)

    def _precompute(self, enc: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        b = enc.shape[0]
        u = uniform_weights(lengths, enc.shape[1], self._dtype)
        return {"mean": weighted_sum(u, enc, lengths, np.arange(b), valid_only=True)}

    def step(self, prepared: Prepared, dec_z=None, state=None, *, rows=None) -> AttentionOutput:
        """prepared: from ``prepare``; dec_z: ignored; state ``[N, T]`` or None (passed through);
        rows ``[N]`` utterance of each row (default arange(B)).

        Returns context ``[N, E]``, weights U ``[N, T]``, state (as given, else U), peak ``[N]``.
        """
        op = "NoAtt.step"
        prepared, rows, _ = self._begin(op, prepared, None, rows)
        u = self._uniform(prepared, rows)
        if state is not None:
            state = check_array(op, "state", state, u.shape, self._dtype, "([N, T] attention weights)")
        return AttentionOutput(prepared.mean[rows], u, u if state is None else state,
                               np.zeros(rows.shape[0], np.int64))
