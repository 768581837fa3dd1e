"""Scaled dot-product attention (Transformer style) on NumPy arrays."""
from __future__ import annotations


import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, positive_scalar

_OP = "scaled_dot_product_attention"


def _mask_4d(mask, q_ndim: int, full: tuple[int, int, int, int], dtype: np.dtype) -> np.ndarray:
    """Broadcasts a bool (True = keep) or additive float mask to [B, H, Tq, Tk] without copying."""
    mask = np.asarray(mask) if not isinstance(mask, np.ndarray) else mask
    if mask.dtype == np.bool_:
        pass
    elif mask.dtype.kind == "f":
        if mask.dtype != dtype:
            mask = mask.astype(dtype)
    else:
        raise TypeError(f"{_OP}: mask must be bool (True = keep) or a float additive mask, got dtype {mask.dtype}")
    B, H, Tq, Tk = full
    target = (B, Tq, Tk) if q_ndim == 3 else full
    try:
        mask = np.broadcast_to(mask, target)
    except ValueError:
        raise ValueError(f"{_OP}: mask must be broadcastable to {target}, got shape {mask.shape}") from None
    if q_ndim == 3:
        mask = mask[:, None]
    return mask


def _lengths(key_lengths) -> np.ndarray:
    """key_lengths as an int64 array (range and shape are checked in C++)."""
    arr = np.asarray(key_lengths)
    if arr.dtype != np.int64 and arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    return arr


def scaled_dot_product_attention(
    q,
    k,
    v,
    *,
    key_lengths=None,
    mask=None,
    causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
    out=None,
):
    """softmax(scale * q k^T + mask) v, with an online-softmax SIMD kernel.

    Shapes: q ``[B, H, Tq, D]``, k ``[B, H, Tk, D]``, v ``[B, H, Tk, Dv]`` (or all three without
    the head axis: ``[B, T, D]``); float32 or float64, all the same dtype. Returns the output
    ``[B, H, Tq, Dv]`` (in q's rank), and with ``return_weights=True`` the pair
    ``(output, weights)`` with weights ``[B, H, Tq, Tk]``.

    Masking, all optional and combinable:

    - ``key_lengths`` ``[B]`` integers: keys ``j >= key_lengths[b]`` are ignored (padding).
    - ``mask`` broadcastable to ``[B, H, Tq, Tk]`` (``[B, Tq, Tk]`` for 3-D inputs): bool with
      True = attend, or float, added to the scaled scores (use ``-inf`` to mask).
    - ``causal``: query ``i`` sees keys ``j <= i + (Tk - Tq)``, i.e. the last query is aligned with
      the last key (the convention of decoding with a key cache). With ``Tq > Tk`` the first
      ``Tq - Tk`` queries see no key.

    A query whose keys are all masked gets an output of zeros (and zero weights), never NaN.
    ``scale`` defaults to ``1/sqrt(D)``. ``out`` (q's shape with Dv as last axis, q's dtype) is
    written and returned instead of a new array. Inputs are used without copying when their last
    axis is contiguous; other strides (head views, slices) are read in place.
    """
    # Checks of shapes, dtypes, strides and lengths happen once, in the C++ front door, with
    # messages that name the argument; this layer only routes non-NumPy inputs to clear errors,
    # views 3-D inputs as one head and allocates the outputs (about 1 us in all).
    if type(q) is not np.ndarray or type(k) is not np.ndarray or type(v) is not np.ndarray:
        q, k, v = (host_float_array(_OP, n, x, (3, 4)) for n, x in (("q", q), ("k", k), ("v", v)))
    three_d = q.ndim == 3 and k.ndim == 3 and v.ndim == 3
    if three_d:
        q, k, v = q[:, None], k[:, None], v[:, None]
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    if key_lengths is not None:
        key_lengths = _lengths(key_lengths)
    if mask is not None and q.ndim == 4 and k.ndim == 4:
        mask = _mask_4d(mask, 3 if three_d else 4, q.shape[:3] + k.shape[2:3], q.dtype)
    if out is None:
        out = np.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
        out_view = out
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{_OP}: out must be a numpy.ndarray, got {describe(out)}")
        out_view = out[:, None] if three_d and out.ndim == 3 else out
    weights = np.empty(q.shape[:-1] + k.shape[-2:-1], dtype=q.dtype) if return_weights else None

    _core.sdpa(q, k, v, out_view, weights, key_lengths, mask, bool(causal), scale or 0.0, three_d)
    if three_d:
        if out.ndim == 4:
            out = out[:, 0]
        if weights is not None:
            weights = weights[:, 0]
    return (out, weights) if return_weights else out
