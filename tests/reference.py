"""Float64 NumPy references: the executable spec of attnkit's Transformer-style ops."""
from __future__ import annotations

import numpy as np


def sdpa(q, k, v, *, key_lengths=None, mask=None, causal=False, scale=None):
    """Scaled dot-product attention in float64, shapes as attnkit.scaled_dot_product_attention.

    q [..., Tq, D], k [..., Tk, D], v [..., Tk, Dv] with leading axes (B[, H]). Masked scores
    are dropped from the softmax; a row with nothing left gets zero weights and a zero output.
    ``causal`` is False, True (= "upper_left") or "lower_right".
    Returns (out [..., Tq, Dv], weights [..., Tq, Tk]).
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    d = q.shape[-1]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = scale * (q @ np.swapaxes(k, -1, -2))
    tq, tk = s.shape[-2:]
    keep = np.ones(s.shape, dtype=bool)
    if key_lengths is not None:
        lens = np.asarray(key_lengths).reshape((-1,) + (1,) * (s.ndim - 1))
        keep &= np.arange(tk) < lens
    if causal:  # True / "upper_left": j <= i (PyTorch's is_causal); "lower_right": j <= i + tk - tq
        keep &= np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq if causal == "lower_right" else 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == np.bool_:
            keep &= np.broadcast_to(mask, s.shape)
        else:
            s = s + mask.astype(np.float64)
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    total = p.sum(axis=-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), 0.0)
    return p @ v, p


def linear(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + np.asarray(b, np.float64)


def multi_head(query, key, value, wq, bq, wk, bk, wv, bv, wo, bo, num_heads, **masks):
    """Multi-head attention in float64 from separate projection weights ([out, in] each). A mask
    of at most 3 axes is one [B, Tq, Tk] mask for every head; 4 axes are [B, H, Tq, Tk].
    Returns (out [B, Tq, E], weights [B, H, Tq, Tk])."""
    B, Tq, E = query.shape
    Tk = key.shape[1]
    dh = E // num_heads
    split = lambda x, t: x.reshape(B, t, num_heads, dh).transpose(0, 2, 1, 3)
    q, k, v = split(linear(query, wq, bq), Tq), split(linear(key, wk, bk), Tk), split(linear(value, wv, bv), Tk)
    if masks.get("mask") is not None and np.ndim(masks["mask"]) == 3:
        masks = {**masks, "mask": np.asarray(masks["mask"])[:, None]}
    ctx, w = sdpa(q, k, v, **masks)
    return linear(ctx.transpose(0, 2, 1, 3).reshape(B, Tq, E), wo, bo), w
