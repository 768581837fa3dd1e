"""Scaled dot-product attention (Transformer style) on NumPy arrays."""
from __future__ import annotations


import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, is_device_array, lengths_array, positive_scalar

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
    return_weights: bool = False,
    out=None,
    stream=None,
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
    # views 3-D inputs as one head and allocates the outputs (about 1 us in all).
    if type(q) is not np.ndarray or type(k) is not np.ndarray or type(v) is not np.ndarray:
        if any(is_device_array(x) for x in (q, k, v, out)):
            return _sdpa_gpu(q, k, v, key_lengths, mask, causal, scale, return_weights, out, stream)
        q, k, v = (host_float_array(_OP, n, x, (3, 4)) for n, x in (("q", q), ("k", k), ("v", v)))
    if stream is not None:
        raise ValueError(f"{_OP}: stream is for GPU arrays, but q, k and v are NumPy arrays")
    three_d = q.ndim == 3 and k.ndim == 3 and v.ndim == 3
    if three_d:
        q, k, v = q[:, None], k[:, None], v[:, None]
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    offset = None if causal is False else _causal_offset(causal, q.shape[-2] if q.ndim > 1 else 0,
                                                          k.shape[-2] if k.ndim > 1 else 0)
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

    _core.sdpa(q, k, v, out_view, weights, key_lengths, mask, offset is not None, offset or 0, scale or 0.0, three_d)
    if three_d:
        if out.ndim == 4:
            out = out[:, 0]
        if weights is not None:
            weights = weights[:, 0]
    return (out, weights) if return_weights else out


def _sdpa_gpu(q, k, v, key_lengths, mask, causal, scale, return_weights, out, stream):
    """The GPU path of scaled_dot_product_attention (its docstring says what it takes)."""
    from attnkit._cuda import FLOAT_DTYPES, GpuCall

    call = GpuCall(_OP, {"q": q, "k": k, "v": v, "out": out}, stream)
    dtype = call.dtype_name(q)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{_OP}: q must have dtype float32, float16 or bfloat16 on the GPU, got {dtype}")
    if call.dtype_name(k) != dtype or call.dtype_name(v) != dtype:
        raise TypeError(
            f"{_OP}: q, k and v must share one dtype, got {dtype}, {call.dtype_name(k)} and {call.dtype_name(v)}"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim not in (3, 4):
            raise ValueError(f"{_OP}: {name} must be 3-D or 4-D, got shape {tuple(x.shape)}")
        if 0 in tuple(x.shape):
            raise ValueError(f"{_OP}: {name} must not have an empty axis, got shape {tuple(x.shape)}")
    if not q.ndim == k.ndim == v.ndim:
        raise ValueError(f"{_OP}: q, k and v must have the same rank, got {q.ndim}, {k.ndim} and {v.ndim}")
    qs, ks, vs = tuple(q.shape), tuple(k.shape), tuple(v.shape)
    if ks[:-2] != qs[:-2] or ks[-1] != qs[-1]:
        lead = "[B, Tk, D]" if q.ndim == 3 else "[B, H, Tk, D]"
        raise ValueError(f"{_OP}: k must be {lead} with B{', H' if q.ndim == 4 else ''}, D as in q {qs}, got {ks}")
    if vs[:-1] != ks[:-1]:
        lead = "[B, Tk, Dv]" if q.ndim == 3 else "[B, H, Tk, Dv]"
        raise ValueError(f"{_OP}: v must be {lead} with the leading axes of k {ks}, got {vs}")
    if scale is not None:
        scale = positive_scalar(_OP, "scale", scale)
    offset = _causal_offset(causal, qs[-2], ks[-2])
    three_d = q.ndim == 3
    out_shape = qs[:-1] + vs[-1:]
    if out is not None:
        if tuple(out.shape) != out_shape:
            raise ValueError(f"{_OP}: out must have shape {out_shape}, got {tuple(out.shape)}")
        if call.dtype_name(out) != dtype:
            raise TypeError(f"{_OP}: out must have dtype {dtype}, got {call.dtype_name(out)}")

    with call:
        lib = call.lib
        q4, k4, v4 = (lib.last_axis_contiguous(x[:, None] if three_d else x) for x in (q, k, v))
        B, H, Tq, _ = q4.shape
        Tk = k4.shape[2]
        lengths = None
        if key_lengths is not None:
            if is_device_array(key_lengths):
                call.same_kind("key_lengths", key_lengths)
                kind = call.dtype_name(key_lengths)
                if not kind.startswith(("int", "uint")):
                    raise TypeError(f"{_OP}: key_lengths must hold integers, got dtype {kind}")
                if tuple(key_lengths.shape) != (B,):
                    raise ValueError(
                        f"{_OP}: key_lengths must have shape ({B},) (one per batch entry), got {tuple(key_lengths.shape)}"
                    )
                lengths = lib.as_int64(key_lengths)
            else:
                lengths = lib.from_host(lengths_array(_OP, "key_lengths", key_lengths, B, Tk, "Tk"), q4)
        mask4 = None
        if mask is not None:
            call.same_kind("mask", mask)
            kind = call.dtype_name(mask)
            if kind != "bool" and not kind.startswith(("float", "bfloat")):
                raise TypeError(f"{_OP}: mask must be bool (True = keep) or a float additive mask, got dtype {kind}")
            target = (B, Tq, Tk) if three_d else (B, H, Tq, Tk)
            try:
                mask4 = lib.broadcast_to(mask if kind == "bool" else lib.cast_like(mask, q4), target)
            except (ValueError, RuntimeError):
                raise ValueError(f"{_OP}: mask must be broadcastable to {target}, got shape {tuple(mask.shape)}") from None
            if three_d:
                mask4 = mask4[:, None]
        if out is None:
            out = lib.empty(out_shape, q)
        out4 = out[:, None] if three_d else out
        weights = lib.empty(qs[:-1] + ks[-2:-1], q) if return_weights else None
        weights4 = weights[:, None] if weights is not None and three_d else weights
        _core.sdpa_cuda(*map(call.capsule, (q4, k4, v4, out4, weights4, lengths, mask4)),
                        offset is not None, offset or 0, scale or 0.0, call.stream)
    return (out, weights) if return_weights else out
