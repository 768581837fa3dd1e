"""Multi-head attention with input and output projections (Transformer style).

Weights come as a dict of arrays in either of two layouts:

- ``torch.nn.MultiheadAttention``: ``in_proj_weight [3E, E]`` and ``in_proj_bias [3E]`` (or
  ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when key/value sizes differ), and
  ``out_proj.weight [E, E]``, ``out_proj.bias [E]``;
- ESPnet's Transformer ``MultiHeadedAttention``: ``linear_q``, ``linear_k``, ``linear_v``,
  ``linear_out``, each with ``.weight [out, in]`` and ``.bias``.

A ``Linear`` computes ``y = x W^T + b``. Heads are split by strides: the projected ``[B, T, E]``
arrays are viewed as ``[B, H, T, E/H]`` and handed to the kernel without a copy.
"""
from __future__ import annotations

import numpy as np

from attnkit._arrays import c_aligned, describe, host_float_array
from attnkit._core import UnsupportedError
from attnkit._linear import PackedWeight, linear
from attnkit.dot_product import scaled_dot_product_attention

_OP = "multi_head_attention"


def _array(op: str, params: dict, key: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if key not in params:
        raise ValueError(f"{op}: params must hold {key!r} with the keys given, got keys {sorted(params)}")
    value = params[key]
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    if value.dtype.kind != "f":
        raise TypeError(f"{op}: params[{key!r}] must be a float array, got {describe(value)}")
    if value.shape != shape:
        raise ValueError(f"{op}: params[{key!r}] must have shape {shape}, got {value.shape}")
    return value.astype(dtype, copy=False)


_OTHER_VARIANTS = {
    "bias_k": "torch.nn.MultiheadAttention(add_bias_kv=True)",
    "bias_v": "torch.nn.MultiheadAttention(add_bias_kv=True)",
    "linear_pos.weight": "ESPnet's RelPositionMultiHeadedAttention",
    "pos_bias_u": "ESPnet's RelPositionMultiHeadedAttention",
    "pos_bias_v": "ESPnet's RelPositionMultiHeadedAttention",
}


def _projections(params: dict, e: int, ek: int, ev: int, dtype: np.dtype):
    """Returns ([(Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)], packed), biases possibly None; packed is
    torch's (in_proj_weight, in_proj_bias) when given that way, else None."""
    if not isinstance(params, dict):
        raise TypeError(f"{_OP}: params must be a dict of arrays, got {describe(params)}")
    p = params
    # Weights of variants whose math differs: computing plain attention without them would be a
    # silently wrong answer.
    other = sorted(set(p) & set(_OTHER_VARIANTS))
    if other:
        raise UnsupportedError(f"{_OP}: params hold {other}, weights of {_OTHER_VARIANTS[other[0]]}, which "
                               f"attnkit does not implement")
    packed = None
    if "in_proj_weight" in p or "q_proj_weight" in p:
        if "in_proj_weight" in p:
            w = _array(_OP, p, "in_proj_weight", dtype, (3 * e, e))
            ws = (w[:e], w[e : 2 * e], w[2 * e :])
            if ek != e or ev != e:
                raise ValueError(f"{_OP}: in_proj_weight needs key/value size {e}, got {ek} and {ev}")
        else:
            ws = tuple(_array(_OP, p, n, dtype, (e, d)) for n, d in
                       (("q_proj_weight", e), ("k_proj_weight", ek), ("v_proj_weight", ev)))
        b = _array(_OP, p, "in_proj_bias", dtype, (3 * e,)) if "in_proj_bias" in p else None
        bs = (None,) * 3 if b is None else tuple(np.split(b, 3))
        if "in_proj_weight" in p:
            packed = (w, b)
        wo = _array(_OP, p, "out_proj.weight", dtype, (e, e))
        bo = _array(_OP, p, "out_proj.bias", dtype, (e,)) if "out_proj.bias" in p else None
        return list(zip(ws, bs)) + [(wo, bo)], packed
    if "linear_q.weight" in p:
        out = []
        for name, d in (("linear_q", e), ("linear_k", ek), ("linear_v", ev), ("linear_out", e)):
            w = _array(_OP, p, f"{name}.weight", dtype, (e, d))
            b = _array(_OP, p, f"{name}.bias", dtype, (e,)) if f"{name}.bias" in p else None
            out.append((w, b))
        return out, None
    raise ValueError(
        f"{_OP}: params must hold torch.nn.MultiheadAttention weights ('in_proj_weight', 'out_proj.weight', ...) "
        f"or ESPnet MultiHeadedAttention weights ('linear_q.weight', ...), got keys {sorted(p)[:6]}"
    )


# Below this many rows (a decoder step's B x Tq) a projection reads the weight as it is: packing
# it for one call costs more than the packed layout saves (2 threads, 256 -> 256: 1 row 6 us as
# it is, 47 us with the packing; 5 rows 26 vs 24; 10 rows 49 vs 36; 512 -> 512: 5 rows 113 vs
# 88 us).
_PACK_ROWS = 4


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    # attnkit's own GEMM rather than NumPy's BLAS, whose threads keep spinning beside attnkit's
    # pool: B=8 T=512 E=256 H=4 at 2 threads, 36-46 ms with `@`, 31 ms with this
    # (benchmarks/NOTES.md). More rows: on the weight packed for this call (~15 us for d_model
    # 256, ~40 us for 512; no exactness scan).
    b = None if b is None else c_aligned(b)
    if x.size < _PACK_ROWS * x.shape[-1]:
        return linear(x, c_aligned(w), b)
    return linear(x, PackedWeight(w, half=False), b)


def _batch_first(query, key, value):
    """[T, B, *] inputs as [B, T, *] views, self-attention's one array staying one array."""
    q = query.transpose(1, 0, 2)
    k = q if key is query else key.transpose(1, 0, 2)
    v = k if value is key else value.transpose(1, 0, 2)
    return q, k, v


def multi_head_attention(
    query,
    key,
    value,
    params: dict,
    *,
    num_heads: int,
    key_lengths=None,
    mask=None,
    causal: bool | str = False,
    scale: float | None = None,
    return_weights: bool = False,
    batch_first: bool = True,
):
    """Multi-head attention: ``out = concat_h(attn(Q_h, K_h, V_h)) W_o^T + b_o``.

    query ``[B, Tq, E]``, key ``[B, Tk, Ek]``, value ``[B, Tk, Ev]``, float32 or float64; with
    ``batch_first=False`` (``torch.nn.MultiheadAttention``'s default) ``[Tq, B, E]``, ``[Tk, B,
    Ek]`` and ``[Tk, B, Ev]``, and the output ``[Tq, B, E]``. ``num_heads`` must divide E; each head
    has size ``E / num_heads`` and the default scale is ``1/sqrt(E / num_heads)``.

    ``key_lengths``, ``mask`` and ``causal`` mean what they mean in
    :func:`attnkit.scaled_dot_product_attention`. ``mask`` (True = keep, or additive) is
    broadcast to ``[B, Tq, Tk]`` when it has at most 3 axes (ESPnet's ``(B, 1, Tk)`` and ``(B, Tq,
    Tk)`` masks as they are), to ``[B, H, Tq, Tk]`` when it has 4. Returns ``[B, Tq, E]``, and
    with ``return_weights=True`` also the per-head weights ``[B, H, Tq, Tk]`` (average them over
    axis 1 for what ``torch.nn.MultiheadAttention`` returns by default).
    """
    query = host_float_array(_OP, "query", query, (3,))
    key = query if key is query else host_float_array(_OP, "key", key, (3,))
    value = key if value is key else host_float_array(_OP, "value", value, (3,))
    if not batch_first:
        out = multi_head_attention(*_batch_first(query, key, value), params, num_heads=num_heads,
                                   key_lengths=key_lengths, mask=mask, causal=causal, scale=scale,
                                   return_weights=return_weights)
        if return_weights:
            return np.ascontiguousarray(out[0].transpose(1, 0, 2)), out[1]
        return np.ascontiguousarray(out.transpose(1, 0, 2))
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"{_OP}: query, key and value must share one dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    B, Tq, E = query.shape
    if key.shape[0] != B or value.shape[:2] != key.shape[:2]:
        raise ValueError(f"{_OP}: key and value must be [B, Tk, *] with B={B} and one Tk, got {key.shape} and {value.shape}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1 or E % num_heads:
        raise ValueError(f"{_OP}: num_heads must be a positive integer dividing E={E}, got {num_heads!r}")
    H, Dh, Tk = int(num_heads), E // int(num_heads), key.shape[1]
    projs, packed = _projections(params, E, key.shape[2], value.shape[2], query.dtype)
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = projs

    if packed is not None and query is key and key is value:
        # Self-attention with a packed in_proj: one [B*T, E] x [E, 3E] product instead of three.
        qkv = _linear(query, *packed)
        q, k, v = qkv[..., :E], qkv[..., E : 2 * E], qkv[..., 2 * E :]
    else:
        q, k, v = _linear(query, wq, bq), _linear(key, wk, bk), _linear(value, wv, bv)

    # [B, T, E] -> [B, H, T, Dh] views; the context is written head-interleaved straight into
    # [B, Tq, H, Dh], which is the [B, Tq, E] input of the output projection.
    heads = lambda x, t: x.reshape(B, t, H, Dh).transpose(0, 2, 1, 3)
    if mask is not None and np.ndim(mask) == 3:
        mask = np.asarray(mask)[:, None]  # [B|1, Tq|1, Tk] -> [B|1, 1, Tq|1, Tk]: one mask for every head
    context = np.empty((B, Tq, H, Dh), dtype=query.dtype)
    result = scaled_dot_product_attention(
        heads(q, Tq), heads(k, Tk), heads(v, Tk),
        key_lengths=key_lengths, mask=mask, causal=causal, scale=scale,
        return_weights=return_weights, out=context.transpose(0, 2, 1, 3),
    )
    out = _linear(context.reshape(B, Tq, E), wo, bo)
    return (out, result[1]) if return_weights else out
