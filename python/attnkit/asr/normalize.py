"""ESPnet2's ``GlobalMVN`` (espnet2/layers/global_mvn.py): global mean-variance normalisation."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnkit.asr.params import checked_params, float_dtype, padded_batch


class GlobalMVN:
    """y = (x - mean) / std on valid frames, 0 on padded ones.

    ``params``: ESPnet's buffers ``mean [F]`` and ``std [F]`` (the stats file is only read at
    ESPnet training time; the model carries the result). As ESPnet, the order is subtract, zero
    the padding, divide, in the input's dtype; ``norm_means`` / ``norm_vars`` switch the two
    halves off. Unlike ESPnet (which subtracts in place), the caller's array is left unchanged.
    Call: x ``[B, T, F]``, lengths ``[B]`` or None (all T) -> (y ``[B, T, F]``, lengths).
    """

    def __init__(self, params: Mapping[str, Any], *, size: int, norm_means: bool = True, norm_vars: bool = True,
                 dtype=np.float32):
        op = type(self).__name__
        self.size, self.norm_means, self.norm_vars = size, bool(norm_means), bool(norm_vars)
        self.dtype = float_dtype(op, dtype)
        self.param_shapes = self.shapes(size)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)

    @staticmethod
    def shapes(size: int) -> dict[str, tuple[int, ...]]:
        return {"mean": (size,), "std": (size,)}

    def __call__(self, x: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        op = type(self).__name__
        x, lengths = padded_batch(op, x, lengths, self.size)
        x = x.astype(self.dtype)  # a copy: the caller's features stay as they were
        if self.norm_means:
            x -= self.params["mean"]
        x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
        if self.norm_vars:
            x /= self.params["std"]
        return x, lengths
