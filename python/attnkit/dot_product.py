"""Scaled dot-product attention (Transformer style) on NumPy arrays."""
from __future__ import annotations


import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, is_device_array, positive_scalar
from attnkit._sdpa_shapes import HostOps, broadcast_call

_OP = "scaled_dot_product_attention"


def _host_mask(mask, dtype: np.dtype) -> np.ndarray:
    """A bool (True = keep) mask as it is, an additive float mask in q's dtype."""
    mask = np.asarray(mask) if not isinstance(mask, np.ndarray) else mask
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind == "f":
        return mask if mask.dtype == dtype else mask.astype(dtype)
    raise TypeError(f"{_OP}: mask must be bool (True = keep) or a float additive mask, got dtype {mask.dtype}")


def _mask_4d(mask, q_ndim: int, full: tuple[int, int, int, int], dtype: np.dtype) -> np.ndarray:
    """Broadcasts a bool (True = keep) or additive float mask to [B, H, Tq, Tk] without copying."""
    mask = _host_mask(mask, dtype)
    B, H, Tq, Tk = full
    target = (B, Tq, Tk) if q_ndim == 3 else full
    try:
        mask = np.broadcast_to(mask, target)
    except ValueError:
        raise ValueError(f"{_OP}: mask must be broadcastable to {target}, got shape {mask.shape}") from None
    if q_ndim == 3:
        mask = mask[:, None]
    return mask


def _causal_offset(causal, Tq: int, Tk: int) -> int | None:
    """``causal`` as the kernels' offset: query i sees keys ``j <= i + offset`` (None: not causal)."""
    if causal is None or isinstance(causal, (bool, np.bool_)):
        return 0 if causal else None
    if isinstance(causal, str) and causal in ("upper_left", "lower_right"):
        return 0 if causal == "upper_left" else Tk - Tq
    raise ValueError(f"{_OP}: causal must be False, True (= 'upper_left') or 'lower_right', got {causal!r}")


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
    causal: bool | str = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    return_weights: bool = False,
    out=None,
    stream=None,
):
    """softmax(scale * q k^T + mask) v, with an online-softmax SIMD kernel.

    Shapes: q ``[B, H, Tq, D]``, k ``[B, H, Tk, D]``, v ``[B, H, Tk, Dv]`` (or all three without
    the head axis: ``[B, T, D]``); float32 or float64, all the same dtype. Returns the output
    ``[B, H, Tq, Dv]`` (in q's rank), and with ``return_weights=True`` the pair
    ``(output, weights)`` with weights ``[B, H, Tq, Tk]``.

    As in ``torch.nn.functional.scaled_dot_product_attention``, any rank >= 2 works, and the
    leading axes of q, k and v broadcast (e.g. k and v ``[B, 1, Tk, D]`` shared by every head):
    the output is ``[*L, Tq, Dv]`` with L the broadcast leading shape. With ``enable_gqa=True``
    (grouped-query attention) k and v may have fewer heads (axis -3) than q, dividing q's: query
    head ``h`` uses kv head ``h // (Hq / Hkv)``. Shared and grouped k and v are read in place
    (repeated in memory only when k and v are grouped differently, or for 3-D grouped inputs
    with ``key_lengths``, whose lengths then index the heads).

    Masking, all optional and combinable:

    - ``key_lengths`` ``[B]`` integers, one per index of the first leading axis: keys ``j >=
      key_lengths[b]`` are ignored (padding). (2-D inputs: one integer.)
    - ``mask`` broadcastable to ``[B, H, Tq, Tk]`` (``[*L, Tq, Tk]``, e.g. ``[B, Tq, Tk]`` for 3-D
      inputs): bool with True = attend, or float, added to the scaled scores (use ``-inf`` to mask).
    - ``causal``: ``True`` (or ``"upper_left"``) is PyTorch's ``is_causal``: query ``i`` sees keys
      ``j <= i``, the first query aligned with the first key. ``"lower_right"`` aligns the last
      query with the last key instead, ``j <= i + (Tk - Tq)`` (FlashAttention's convention, and
      decoding with a key cache); with ``Tq > Tk`` its first ``Tq - Tk`` queries see no key. With
      ``Tq == Tk`` the two are the same.

    A query whose keys are all masked gets an output of zeros (and zero weights), never NaN.
    ``scale`` defaults to ``1/sqrt(D)``. ``out`` (q's shape with Dv as last axis, q's dtype) is
    written and returned instead of a new array. Inputs are used without copying when their last
    axis is contiguous; other strides (head views, slices) are read in place.

    **GPU arrays** (CuPy arrays, or PyTorch CUDA tensors) run the CUDA kernel on their device and
    return arrays of the same library: float32, float16 or bfloat16 with float32 softmax and
    accumulation, D and Dv up to 256. The call runs on the library's current stream, or on
    ``stream`` (a CuPy or PyTorch stream, or a ``cudaStream_t`` integer), which first waits for
    the current one; it never waits on the host. ``mask`` must then be a GPU array too;
    ``key_lengths`` may be a host sequence (checked, then copied to the device: not capturable
    in a CUDA graph) or an integer GPU array (not checked, which would need a wait on the host:
    values are clamped to ``[0, Tk]``).
    """
    # Checks of shapes, dtypes, strides and lengths happen once, in the C++ front door, with
    # messages that name the argument; this layer only routes non-NumPy inputs to clear errors,
    # views 3-D inputs as one head and allocates the outputs (about 1 us in all). Calls whose
    # leading axes differ (broadcasting, grouped heads) are refused there and go the general way:
    # comparing the shapes here first would cost 0.4 us of every call.
    if type(q) is not np.ndarray or type(k) is not np.ndarray or type(v) is not np.ndarray:
        if any(is_device_array(x) for x in (q, k, v, out)):
            return _sdpa_gpu(q, k, v, key_lengths, mask, causal, scale, enable_gqa, return_weights, out, stream)
        q, k, v = (host_float_array(_OP, n, x, None) for n, x in (("q", q), ("k", k), ("v", v)))
    if stream is not None:
        raise ValueError(f"{_OP}: stream is for GPU arrays, but q, k and v are NumPy arrays")
    rank = q.ndim
    if (rank != 3 and rank != 4) or k.ndim != rank or v.ndim != rank or enable_gqa:
        return _sdpa_broadcast(q, k, v, key_lengths, mask, causal, scale, enable_gqa, return_weights, out)
    try:
        return _sdpa_same_leading_axes(q, k, v, key_lengths, mask, causal, scale, return_weights, out)
    except ValueError:
        if k.shape[:-2] == q.shape[:-2] == v.shape[:-2]:
            raise
    return _sdpa_broadcast(q, k, v, key_lengths, mask, causal, scale, enable_gqa, return_weights, out)


def _sdpa_same_leading_axes(q, k, v, key_lengths, mask, causal, scale, return_weights, out):
    """NumPy q, k, v all [B, H, T, *] or all [B, T, *]: one kernel call (ValueError if their
    leading axes differ)."""
    three_d = q.ndim == 3
    if three_d:
        q, k, v = q[:, None], k[:, None], v[:, None]
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    offset = None if causal is False else _causal_offset(causal, q.shape[-2], k.shape[-2])
    if key_lengths is not None:
        key_lengths = _lengths(key_lengths)
    if mask is not None:
        mask = _mask_4d(mask, 3 if three_d else 4, q.shape[:3] + k.shape[2:3], q.dtype)
    if out is None:
        out = np.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
        out_view = out
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{_OP}: out must be a numpy.ndarray, got {describe(out)}")
        out_view = out[:, None] if three_d and out.ndim == 3 else out
    weights = np.empty(q.shape[:-1] + k.shape[-2:-1], dtype=q.dtype) if return_weights else None

    _core.sdpa(q, k, v, out_view, weights, key_lengths, mask, offset is not None, offset or 0, scale or 0.0, three_d)
    if three_d:
        if out.ndim == 4:
            out = out[:, 0]
        if weights is not None:
            weights = weights[:, 0]
    return (out, weights) if return_weights else out


def _sdpa_broadcast(q, k, v, key_lengths, mask, causal, scale, enable_gqa, return_weights, out):
    """NumPy inputs on PyTorch's shape rules (other ranks, broadcast leading axes, grouped heads)."""
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"{_OP}: out must be a numpy.ndarray, got {describe(out)}")

    def run(q4, k4, v4, o4, w4, lengths, m4):
        offset = None if causal is False else _causal_offset(causal, q4.shape[2], k4.shape[2])
        _core.sdpa(q4, k4, v4, o4, w4, lengths, m4, offset is not None, offset or 0, scale or 0.0, False)

    return broadcast_call(q, k, v, key_lengths=key_lengths, mask=None if mask is None else _host_mask(mask, q.dtype),
                          enable_gqa=enable_gqa, pack_groups=not causal, return_weights=return_weights, out=out,
                          ops=HostOps, run=run)


def _sdpa_gpu(q, k, v, key_lengths, mask, causal, scale, enable_gqa, return_weights, out, stream):
    """The GPU path of scaled_dot_product_attention (its docstring says what it takes): every call
    goes through broadcast_call (10-17 us of Python for a 4-D call on this machine's CPU)."""
    from attnkit._cuda import FLOAT_DTYPES, GpuCall

    call = GpuCall(_OP, {"q": q, "k": k, "v": v, "out": out}, stream)
    dtype = call.dtype_name(q)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{_OP}: q must have dtype float32, float16 or bfloat16 on the GPU, got {dtype}")
    if call.dtype_name(k) != dtype or call.dtype_name(v) != dtype:
        raise TypeError(
            f"{_OP}: q, k and v must share one dtype, got {dtype}, {call.dtype_name(k)} and {call.dtype_name(v)}"
        )
    if out is not None and call.dtype_name(out) != dtype:
        raise TypeError(f"{_OP}: out must have dtype {dtype}, got {call.dtype_name(out)}")
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    if mask is not None:
        call.same_kind("mask", mask)
        kind = call.dtype_name(mask)
        if kind != "bool" and not kind.startswith(("float", "bfloat")):
            raise TypeError(f"{_OP}: mask must be bool (True = keep) or a float additive mask, got dtype {kind}")
    if key_lengths is not None and is_device_array(key_lengths):
        call.same_kind("key_lengths", key_lengths)
    lib = call.lib

    def launch(q4, k4, v4, out4, weights4, lengths, mask4):
        offset = _causal_offset(causal, q4.shape[2], k4.shape[2])
        if lengths is not None and not is_device_array(lengths):
            lengths = lib.from_host(lengths, q4)  # checked on the host, not capturable in a CUDA graph
        q4, k4, v4 = (lib.last_axis_contiguous(x) for x in (q4, k4, v4))
        _core.sdpa_cuda(*map(call.capsule, (q4, k4, v4, out4, weights4, lengths, mask4)),
                        offset is not None, offset or 0, scale or 0.0, call.stream)

    with call:
        if mask is not None and call.dtype_name(mask) != "bool":
            mask = lib.cast_like(mask, q)
        return broadcast_call(q, k, v, key_lengths=key_lengths, mask=mask, enable_gqa=enable_gqa,
                              pack_groups=not causal, return_weights=return_weights, out=out, ops=lib, run=launch)
