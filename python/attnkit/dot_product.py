"""Scaled dot-product attention (Transformer style) on NumPy arrays."""
from __future__ import annotations

import math

import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, last_axis_contiguous, lengths_array, positive_scalar

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


def _check_out(name: str, out, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{_OP}: {name} must be a numpy.ndarray, got {describe(out)}")
    if out.shape != shape:
        raise ValueError(f"{_OP}: {name} must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{_OP}: {name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{_OP}: {name} must be writeable")
    if out.shape[-1] != 1 and out.strides[-1] != out.itemsize:
        raise ValueError(f"{_OP}: {name} must have a contiguous last axis, got strides {out.strides}")
    return out


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
    q = host_float_array(_OP, "q", q, (3, 4))
    k = host_float_array(_OP, "k", k, (3, 4))
    v = host_float_array(_OP, "v", v, (3, 4))
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"{_OP}: q, k and v must have the same rank, got {q.ndim}, {k.ndim} and {v.ndim}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{_OP}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    three_d = q.ndim == 3
    q4, k4, v4 = (x[:, None] for x in (q, k, v)) if three_d else (q, k, v)
    B, H, Tq, D = q4.shape
    Tk = k4.shape[2]
    if k4.shape != (B, H, Tk, D):
        want = "[B, Tk, D]" if three_d else "[B, H, Tk, D]"
        raise ValueError(f"{_OP}: k must be {want} with B, H, D as in q {q.shape}, got {k.shape}")
    if v4.shape[:3] != (B, H, Tk):
        want = "[B, Tk, Dv]" if three_d else "[B, H, Tk, Dv]"
        raise ValueError(f"{_OP}: v must be {want} with B, H, Tk as in k {k.shape}, got {v.shape}")
    Dv = v4.shape[3]
    q4, k4, v4 = last_axis_contiguous(q4), last_axis_contiguous(k4), last_axis_contiguous(v4)

    scale = 1.0 / math.sqrt(D) if scale is None else positive_scalar(_OP, "scale", scale)
    lengths = None if key_lengths is None else lengths_array(_OP, "key_lengths", key_lengths, B, Tk, "Tk")
    mask4 = None if mask is None else _mask_4d(mask, q.ndim, (B, H, Tq, Tk), q.dtype)

    out_shape = (B, Tq, Dv) if three_d else (B, H, Tq, Dv)
    if out is None:
        out = np.empty(out_shape, dtype=q.dtype)
    else:
        _check_out("out", out, out_shape, q.dtype)
    weights = np.empty((B, Tq, Tk) if three_d else (B, H, Tq, Tk), dtype=q.dtype) if return_weights else None

    _core.sdpa(
        q4, k4, v4,
        out[:, None] if three_d else out,
        None if weights is None else (weights[:, None] if three_d else weights),
        lengths, mask4, bool(causal), scale,
    )
    return (out, weights) if return_weights else out
