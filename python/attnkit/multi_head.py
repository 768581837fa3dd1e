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

from typing import NamedTuple

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


def _layout(params: dict) -> str:
    """The name of params' first query weight: "in_proj_weight", "q_proj_weight" (torch) or
    "linear_q.weight" (ESPnet); TypeError, ValueError or UnsupportedError for anything else."""
    if not isinstance(params, dict):
        raise TypeError(f"{_OP}: params must be a dict of arrays, got {describe(params)}")
    # Weights of variants whose math differs: computing plain attention without them would be a
    # silently wrong answer.
    other = sorted(set(params) & set(_OTHER_VARIANTS))
    if other:
        raise UnsupportedError(f"{_OP}: params hold {other}, weights of {_OTHER_VARIANTS[other[0]]}, which "
                               f"attnkit does not implement")
    for name in ("in_proj_weight", "q_proj_weight", "linear_q.weight"):
        if name in params:
            return name
    raise ValueError(
        f"{_OP}: params must hold torch.nn.MultiheadAttention weights ('in_proj_weight', 'out_proj.weight', ...) "
        f"or ESPnet MultiHeadedAttention weights ('linear_q.weight', ...), got keys {sorted(params)[:6]}"
    )


def _projections(params: dict, e: int, ek: int, ev: int, dtype: np.dtype):
    """Returns ([(Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)], packed), biases possibly None; packed is
    torch's (in_proj_weight, in_proj_bias) when given that way, else None."""
    p = params
    layout = _layout(p)
    if layout == "linear_q.weight":
        out = []
        for name, d in (("linear_q", e), ("linear_k", ek), ("linear_v", ev), ("linear_out", e)):
            w = _array(_OP, p, f"{name}.weight", dtype, (e, d))
            b = _array(_OP, p, f"{name}.bias", dtype, (e,)) if f"{name}.bias" in p else None
            out.append((w, b))
        return out, None
    if layout == "in_proj_weight":
        w = _array(_OP, p, "in_proj_weight", dtype, (3 * e, e))
        ws = (w[:e], w[e : 2 * e], w[2 * e :])
        if ek != e or ev != e:
            raise ValueError(f"{_OP}: in_proj_weight needs key/value size {e}, got {ek} and {ev}")
    else:
        ws = tuple(_array(_OP, p, n, dtype, (e, d)) for n, d in
                   (("q_proj_weight", e), ("k_proj_weight", ek), ("v_proj_weight", ev)))
    b = _array(_OP, p, "in_proj_bias", dtype, (3 * e,)) if "in_proj_bias" in p else None
    bs = (None,) * 3 if b is None else tuple(np.split(b, 3))
    packed = (w, b) if layout == "in_proj_weight" else None
    wo = _array(_OP, p, "out_proj.weight", dtype, (e, e))
    bo = _array(_OP, p, "out_proj.bias", dtype, (e,)) if "out_proj.bias" in p else None
    return list(zip(ws, bs)) + [(wo, bo)], packed


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


def _check_heads(op: str, num_heads, e: int) -> None:
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1 or e % num_heads:
        raise ValueError(f"{op}: num_heads must be a positive integer dividing E={e}, got {num_heads!r}")


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
    _check_heads(_OP, num_heads, E)
    projs, packed = _projections(params, E, key.shape[2], value.shape[2], query.dtype)
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = projs

    if packed is not None and query is key and key is value:
        # Self-attention with a packed in_proj: one [B*T, E] x [E, 3E] product instead of three.
        qkv = _linear(query, *packed)
        q, k, v = qkv[..., :E], qkv[..., E : 2 * E], qkv[..., 2 * E :]
    else:
        q, k, v = _linear(query, wq, bq), _linear(key, wk, bk), _linear(value, wv, bv)
    context, weights = _attend(q, k, v, int(num_heads), key_lengths, mask, causal, scale, return_weights)
    out = _linear(context, wo, bo)
    return (out, weights) if return_weights else out


def _attend(q, k, v, num_heads: int, key_lengths, mask, causal, scale, return_weights):
    """Projected q ``[B, Tq, E]``, k and v ``[B, Tk, E]`` (or ``[1, Tk, E]``, shared by the B
    queries) -> (context ``[B, Tq, E]``, per-head weights ``[B, H, Tq, Tk]`` or None), the heads
    split by strides."""
    B, Tq, E = q.shape
    H, Dh, Tk = num_heads, E // num_heads, k.shape[1]
    # [B, T, E] -> [B, H, T, Dh] views; the context is written head-interleaved straight into
    # [B, Tq, H, Dh], which is the [B, Tq, E] input of the output projection.
    heads = lambda x, t: x.reshape(x.shape[0], t, H, Dh).transpose(0, 2, 1, 3)
    if mask is not None and np.ndim(mask) == 3:
        mask = np.asarray(mask)[:, None]  # [B|1, Tq|1, Tk] -> [B|1, 1, Tq|1, Tk]: one mask for every head
    context = np.empty((B, Tq, H, Dh), dtype=q.dtype)
    result = scaled_dot_product_attention(
        heads(q, Tq), heads(k, Tk), heads(v, Tk),
        key_lengths=key_lengths, mask=mask, causal=causal, scale=scale,
        return_weights=return_weights, out=context.transpose(0, 2, 1, 3),
    )
    return context.reshape(B, Tq, E), (result[1] if return_weights else None)


class MultiHeadMemory(NamedTuple):
    """What ``MultiHeadAttention.memory`` returns: the memory's projected keys and values, ``[B,
    Tk, E]`` each, for as many calls as the memory stays the same (a decoder's cross-attention
    over one encoder output)."""

    keys: np.ndarray
    values: np.ndarray


def _sizes(params: dict) -> tuple[int, int, int]:
    """(E, Ek, Ev) read off the query, key and value weights of either layout (their shapes are
    checked against these by _projections)."""
    names = {"in_proj_weight": ("in_proj_weight",) * 3,
             "q_proj_weight": ("q_proj_weight", "k_proj_weight", "v_proj_weight"),
             "linear_q.weight": ("linear_q.weight", "linear_k.weight", "linear_v.weight")}[_layout(params)]
    shapes = [np.shape(params.get(n)) for n in names]
    if any(len(shape) != 2 for shape in shapes):
        raise ValueError(f"MultiHeadAttention: params {list(dict.fromkeys(names))} must be 2-D weights, got shapes "
                         f"{[shape if n in params else 'missing' for n, shape in zip(names, shapes)]}")
    return shapes[0][1], shapes[1][1], shapes[2][1]


class MultiHeadAttention:
    """:func:`multi_head_attention` as a layer for decoder loops: the weights checked, converted
    to ``dtype`` and packed for attnkit's matrix-product kernel once, here, rather than on every
    call, and a memory's keys and values projected once by :meth:`memory`::

        mha = attnkit.MultiHeadAttention(params, num_heads=4)
        y = mha(x, x, x, key_lengths=lens)            # self-attention
        mem = mha.memory(enc)                         # once per encoder output
        for ...:
            y = mha(y_step, memory=mem, key_lengths=enc_lens)   # cross-attention

    ``params`` as :func:`multi_head_attention` takes them (``torch.nn.MultiheadAttention`` or
    ESPnet ``MultiHeadedAttention`` names); E, the key and value sizes are read off the weights.
    Calls take the arguments of :func:`multi_head_attention` and give the same results to float
    rounding (its per-call products read the weights packed or as they are, depending on the
    rows); a call with ``memory`` gives bit for bit what the same call with the memory's key and
    value gives.
    """

    def __init__(self, params: dict, *, num_heads: int, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"MultiHeadAttention: dtype must be float32 or float64, got {self.dtype}")
        self.embed_dim, self.kdim, self.vdim = _sizes(params)
        _check_heads("MultiHeadAttention", num_heads, self.embed_dim)
        self.num_heads = int(num_heads)
        projs, packed = _projections(params, self.embed_dim, self.kdim, self.vdim, self.dtype)
        # half=False: a float16-valued weight would pick float16 panels, whose products are the
        # same, but only on AVX2 / AVX-512; the layer's numbers should not depend on the CPU.
        pack = lambda w, b: (PackedWeight(w, half=False), None if b is None else c_aligned(b))
        self._q, self._k, self._v, self._out = (pack(w, b) for w, b in projs)
        self._qkv = None if packed is None else pack(*packed)

    def __repr__(self) -> str:
        return (f"attnkit.MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"kdim={self.kdim}, vdim={self.vdim}, dtype={self.dtype.name})")

    def _input(self, op: str, name: str, x, size: int, batch_first: bool) -> np.ndarray:
        x = host_float_array(op, name, x, (3,))
        if x.dtype != self.dtype:
            raise TypeError(f"{op}: {name} must have the layer's dtype {self.dtype.name}, got {x.dtype}")
        if x.shape[2] != size:
            raise ValueError(f"{op}: {name} must have {size} features (last axis), got shape {x.shape}")
        return x if batch_first else x.transpose(1, 0, 2)

    def memory(self, key, value=None, *, batch_first: bool = True) -> MultiHeadMemory:
        """Projects key ``[B, Tk, Ek]`` and value ``[B, Tk, Ev]`` (value None: the key, as an
        encoder output attended as both) for calls with ``memory=``."""
        op = "MultiHeadAttention.memory"
        k = self._input(op, "key", key, self.kdim, batch_first)
        v = k if value is None or value is key else self._input(op, "value", value, self.vdim, batch_first)
        if v.shape[:2] != k.shape[:2]:
            raise ValueError(f"{op}: key and value must be [B, Tk, *] with one B and Tk, got {k.shape} and {v.shape}")
        return MultiHeadMemory(linear(k, *self._k), linear(v, *self._v))

    def __call__(self, query, key=None, value=None, *, memory: MultiHeadMemory | None = None, key_lengths=None,
                 mask=None, causal: bool | str = False, scale: float | None = None, return_weights: bool = False,
                 batch_first: bool = True):
        """query ``[B, Tq, E]`` with key and value as :func:`multi_head_attention` takes them, or
        with ``memory`` from :meth:`memory` in their place: of batch size B, or 1 for a memory
        that every query shares (the hypotheses of one utterance's beam; read in place, not
        repeated). Returns ``[B, Tq, E]`` (``[Tq, B, E]`` with ``batch_first=False``), and with
        ``return_weights=True`` also the per-head weights ``[B, H, Tq, Tk]``."""
        op = "MultiHeadAttention"
        q_in = self._input(op, "query", query, self.embed_dim, batch_first)
        B = q_in.shape[0]
        if memory is not None:
            if key is not None or value is not None:
                raise ValueError(f"{op}: pass key and value, or memory, not both")
            if not isinstance(memory, MultiHeadMemory):
                raise TypeError(f"{op}: memory must come from MultiHeadAttention.memory, got {describe(memory)}")
            k, v = memory
            if k.shape[0] not in (1, B) or k.shape[2] != self.embed_dim or k.dtype != self.dtype:
                raise ValueError(f"{op}: memory must hold [B={B} (or 1), Tk, {self.embed_dim}] {self.dtype.name} "
                                 f"keys (from this layer), got {k.dtype} {k.shape}")
            q = linear(q_in, *self._q)
        elif key is None or value is None:
            raise ValueError(f"{op}: key and value (or memory=) are required")
        elif self._qkv is not None and query is key and key is value:
            qkv = linear(q_in, *self._qkv)  # self-attention: one [B*T, E] x [E, 3E] product
            q, k, v = qkv[..., : self.embed_dim], qkv[..., self.embed_dim : 2 * self.embed_dim], qkv[..., 2 * self.embed_dim :]
        else:
            k_in = self._input(op, "key", key, self.kdim, batch_first)
            v_in = k_in if value is key else self._input(op, "value", value, self.vdim, batch_first)
            if k_in.shape[0] != B or v_in.shape[:2] != k_in.shape[:2]:
                raise ValueError(f"{op}: key and value must be [B, Tk, *] with B={B} and one Tk, got {k_in.shape} "
                                 f"and {v_in.shape}")
            q, k, v = linear(q_in, *self._q), linear(k_in, *self._k), linear(v_in, *self._v)
        context, weights = _attend(q, k, v, self.num_heads, key_lengths, mask, causal, scale, return_weights)
        out = linear(context, *self._out)
        if not batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return (out, weights) if return_weights else out
