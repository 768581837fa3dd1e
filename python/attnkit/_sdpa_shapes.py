"""scaled_dot_product_attention on PyTorch's shape rules, mapped onto the kernels' 4-D calls.

The kernels take q ``[B, H, Tq, D]``, k ``[B, H, Tk, D]``, v ``[B, H, Tk, Dv]`` with any strides
on the two leading axes (0 included). ``torch.nn.functional.scaled_dot_product_attention`` takes
any rank >= 2 whose leading axes broadcast, and with ``enable_gqa`` k and v with fewer heads
(axis -3) than q, head ``h`` using kv head ``h // (Hq / Hkv)``. This module turns such a call
into kernel calls on views, without copying the inputs:

- grouped heads (and one kv head broadcast to all of q's): q's head axis is split into
  ``(Hkv, g)`` and k and v get a broadcast ``g`` axis (stride 0), so each kv head is read in
  place by its g query heads; without a causal mask the g heads' queries become g * Tq query
  rows of one kernel call per kv head, which then reads it once (k and v that only one of them
  groups, a case PyTorch allows, are repeated to q's heads: a copy);
- every array is broadcast to the common leading shape (stride 0 where an input had size 1);
- adjacent leading axes are merged wherever every array's strides allow a view; the last two
  groups become the kernel's B and H, and any groups before them are looped over in Python
  (one kernel call each: only broadcasts that no view can express get there).

``key_lengths`` index the first leading axis of the output (``[B]``, as for 3-D and 4-D calls),
so they are repeated over whatever the kernel's B axis merges with it.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from attnkit._arrays import is_device_array, lengths_array

_OP = "scaled_dot_product_attention"


class HostOps:
    """The array operations broadcast_call needs, for NumPy arrays (the GPU adapters of
    attnkit._cuda have the same methods)."""

    xp = np

    @staticmethod
    def broadcast_to(x, shape):
        return np.broadcast_to(x, shape)

    @staticmethod
    def element_strides(x):
        return tuple(s // x.itemsize for s in x.strides)

    @staticmethod
    def repeat(x, repeats, axis):
        return np.repeat(x, repeats, axis=axis)

    @staticmethod
    def empty(shape, like):
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def contiguous(x):
        return np.ascontiguousarray(x)

    @staticmethod
    def as_int64(x):
        return x.astype(np.int64, copy=False)


def _split_heads(x, lead: tuple, into: tuple):
    """x with its head axis (the last leading one) reshaped into ``into`` (a view: splitting an
    axis never copies); a leading shape without axes gets ``into`` of ones."""
    tail = tuple(x.shape[len(lead):])
    return x.reshape(lead[:-1] + into + tail) if lead else x.reshape((1,) * len(into) + tail)


def _groups(lead: tuple, strides: list) -> list[list[int]]:
    """Runs of adjacent axes of ``lead`` (size-1 axes left out) that every array, given by its
    element strides over ``lead``, can merge into one axis of a view."""
    groups: list[list[int]] = []
    for i, n in enumerate(lead):
        if n == 1:
            continue
        if groups and all(s[groups[-1][-1]] == s[i] * n for s in strides):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _lengths(key_lengths, batch: int, Tk: int, no_leading: bool, ops):
    """key_lengths checked against the first leading axis (``batch`` entries; one for 2-D calls,
    which may also give a single integer)."""
    if is_device_array(key_lengths):
        kind = str(key_lengths.dtype).removeprefix("torch.")
        if not kind.startswith(("int", "uint")):
            raise TypeError(f"{_OP}: key_lengths must hold integers, got dtype {kind}")
        if no_leading and tuple(key_lengths.shape) == ():
            key_lengths = key_lengths.reshape(1)
        if tuple(key_lengths.shape) != (batch,):
            raise ValueError(f"{_OP}: key_lengths must have shape ({batch},) (one per batch entry), "
                             f"got {tuple(key_lengths.shape)}")
        return ops.as_int64(key_lengths), ops
    arr = np.asarray(key_lengths)
    if no_leading and arr.ndim == 0:
        arr = arr.reshape(1)
    return lengths_array(_OP, "key_lengths", arr, batch, Tk, "Tk"), HostOps


def _rows_merge(x, Tq: int, ops) -> bool:
    """Whether x [..., H, Tq, *]'s head and query axes merge into one axis of a view."""
    strides = ops.element_strides(x)
    return strides[-3] == strides[-2] * Tq


def _query_heads_as_rows(arrays, K, Tq: int):
    """Grouped heads [..., Hkv, g] as g * Tq query rows of each kv head (broadcast_call has made
    sure that every layout allows the views): the kernel then reads each kv head once for its g
    query heads instead of g times (a decoder step, Tq = 1: 1 row per call becomes g; B=1 Hq=8
    Hkv=2 Tk=1000, 2 threads: 104 -> 68 us, PyTorch's enable_gqa 73 us in the same run)."""
    q, k, v, out, weights, mask = arrays
    rows = lambda a: None if a is None else a.reshape(K[:-1] + (K[-1] * Tq, a.shape[-1]))  # noqa: E731
    return [rows(q), k[..., 0, :, :], v[..., 0, :, :], rows(out), rows(weights), rows(mask)], K[:-1]


def broadcast_call(q, k, v, *, key_lengths, mask, enable_gqa: bool, pack_groups: bool, return_weights: bool, out,
                   ops, run):
    """Runs ``run(q4, k4, v4, out4, weights4, lengths, mask4)`` (one kernel call on 4-D views;
    weights4, lengths and mask4 may be None) over the broadcast of q, k and v, and returns the
    output ``[*L, Tq, Dv]`` (and the weights ``[*L, Tq, Tk]``), L the broadcast leading shape.
    ``mask`` must already have a dtype the kernel takes (bool, or q's float dtype).
    ``pack_groups``: grouped query heads may become query rows (not with a causal mask)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 2:
            raise ValueError(f"{_OP}: {name} must have at least 2 axes [..., T, D], got shape {tuple(x.shape)}")
        if 0 in tuple(x.shape):
            raise ValueError(f"{_OP}: {name} must not have an empty axis, got shape {tuple(x.shape)}")
    (Tq, D), (Tk, Dk), (Tv, Dv) = tuple(q.shape[-2:]), tuple(k.shape[-2:]), tuple(v.shape[-2:])
    if Dk != D:
        raise ValueError(f"{_OP}: k must be [..., Tk, D] with q's D={D}, got shape {tuple(k.shape)}")
    if Tv != Tk:
        raise ValueError(f"{_OP}: v must be [..., Tk, Dv] with k's Tk={Tk}, got shape {tuple(v.shape)}")
    lq, lk, lv = (tuple(x.shape[:-2]) for x in (q, k, v))

    # Grouped-query attention: g query heads per kv head.
    hq = lq[-1] if lq else 1
    g = 1
    if enable_gqa:
        for name, lead in (("k", lk), ("v", lv)):
            h = lead[-1] if lead else 1
            if 1 < h < hq:  # (more heads than q's is left to the broadcast check)
                if hq % h:
                    raise ValueError(f"{_OP}: with enable_gqa, {name}'s heads (axis -3) must divide q's {hq}, got {h}")
                g = g if g > 1 else hq // h
    if g == 1 and len(lq) >= 2 and hq > 1 and (lk[-1] if lk else 1) == 1 and (lv[-1] if lv else 1) == 1:
        g = hq  # one kv head for all q's heads (multi-query, by broadcasting): grouped the same way
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))  # as the caller gave them, for messages
    hkv = hq // g
    # k and v grouped otherwise than by g (a case PyTorch allows) are repeated to q's heads.
    if g > 1 and 1 < (lk[-1] if lk else 1) < hq and lk[-1] != hkv:
        k, lk = ops.repeat(k, hq // lk[-1], axis=-3), lk[:-1] + (hq,)
    if g > 1 and 1 < (lv[-1] if lv else 1) < hq and lv[-1] != hkv:
        v, lv = ops.repeat(v, hq // lv[-1], axis=-3), lv[:-1] + (hq,)
    # Broadcast-checked with the kv heads counted as q's.
    as_q_heads = lambda lead: lead[:-1] + (hq,) if g > 1 and lead and lead[-1] == hkv else lead  # noqa: E731
    try:
        L = lq if lq == lk == lv else tuple(np.broadcast_shapes(lq, as_q_heads(lk), as_q_heads(lv)))
    except ValueError:
        raise ValueError(f"{_OP}: the leading axes of q, k and v must broadcast together, got shapes "
                         f"{shapes[0]}, {shapes[1]} and {shapes[2]}"
                         + ("" if enable_gqa else " (enable_gqa=True lets k and v have fewer heads than q)")) from None
    if g > 1 and key_lengths is not None and len(L) == 1:
        # The key lengths index the head axis itself (3-D inputs), and the kernel takes them per
        # batch entry: the grouped k and v are repeated to q's heads instead.
        if lk and lk[-1] == hkv:
            k, lk = ops.repeat(k, g, axis=-3), (hq,)
        if lv and lv[-1] == hkv:
            v, lv = ops.repeat(v, g, axis=-3), (hq,)
        g = 1

    if out is not None and tuple(out.shape) != L + (Tq, Dv):
        raise ValueError(f"{_OP}: out must have shape {L + (Tq, Dv)}, got {tuple(out.shape)}")
    given_mask = mask
    if mask is not None:
        try:
            mask = ops.broadcast_to(mask, L + (Tq, Tk))
        except (ValueError, RuntimeError):
            raise ValueError(f"{_OP}: mask must be broadcastable to {L + (Tq, Tk)}, "
                             f"got shape {tuple(mask.shape)}") from None

    # Without a causal mask the g query heads of a kv head can be its g * Tq query rows. That is
    # decided by shapes alone (the kernel's bits depend on how many rows a call has, and a call
    # gives the same bits whatever its inputs' layout): q, out and a mask of whole [Hq, Tq]
    # blocks are made contiguous where their layout would not allow the view.
    pack = g > 1 and pack_groups and (lk[-1] if lk else 1) != hq and (lv[-1] if lv else 1) != hq
    target = None  # the caller's out, when written through a contiguous temporary
    if pack and Tq > 1:
        if mask is not None:
            padded = (1,) * (len(L) + 2 - given_mask.ndim) + tuple(given_mask.shape)
            blocks = (padded[len(L) - 1], padded[-2])
            if blocks == (hq, Tq) and not _rows_merge(mask, Tq, ops):
                mask = ops.broadcast_to(ops.contiguous(given_mask), L + (Tq, Tk))
            pack = blocks in ((hq, Tq), (1, 1))
        if pack:
            q = q if _rows_merge(q, Tq, ops) else ops.contiguous(q)
            if out is not None and not _rows_merge(out, Tq, ops):
                target, out = out, None
    if out is None:
        out = ops.empty(L + (Tq, Dv), q)
    weights = ops.empty(L + (Tq, Tk), q) if return_weights else None

    # Everything on the kernel's leading shape K: L, with the head axis split in two when grouped.
    if g > 1:
        K = L[:-1] + (hkv, g)
        kv_heads = lambda lead: (hkv, g) if lead and lead[-1] == hq else (lead[-1] if lead else 1, 1)  # noqa: E731
        arrays = [_split_heads(q, lq, (hkv, g)), _split_heads(k, lk, kv_heads(lk)), _split_heads(v, lv, kv_heads(lv)),
                  out, weights, mask]
        arrays[3:] = [None if a is None else _split_heads(a, L, (hkv, g)) for a in arrays[3:]]
    else:
        K = L
        arrays = [q, k, v, out, weights, mask]
    # (Only where needed: a broadcast view costs 3-6 us, and NumPy's are read-only, which out and
    # weights, of shape K already, must not be.)
    arrays = [a if a is None or tuple(a.shape[:-2]) == K else ops.broadcast_to(a, K + tuple(a.shape[-2:]))
              for a in arrays]
    if pack:
        arrays, K = _query_heads_as_rows(arrays, K, Tq)
    n = len(K)
    if n == 2:  # the kernel's own leading axes, any strides
        sizes = K
    elif n < 2:
        sizes = (K[0] if n else 1, 1)
    else:
        groups = _groups(K, [ops.element_strides(a)[:n] for a in arrays if a is not None])
        sizes = tuple(math.prod(K[i] for i in grp) for grp in groups)
        if len(sizes) < 2:
            sizes = (sizes + (1, 1))[:2]
    views = [None if a is None else a.reshape(sizes + tuple(a.shape[-2:])) for a in arrays]

    lengths = None
    if key_lengths is not None:
        lengths, lops = _lengths(key_lengths, L[0] if L else 1, Tk, not L, ops)
        if n > 2:  # per kernel call, the lengths of its B rows: along its H axis (never the
            # first leading axis) they are the same
            first_axis = lengths.reshape((K[0],) + (1,) * (n - 1))
            lengths = lops.contiguous(lops.broadcast_to(first_axis, K)).reshape(sizes)

    for outer in itertools.product(*(range(s) for s in sizes[:-2])):
        q4, k4, v4, o4, w4, m4 = (None if a is None else a[outer] for a in views)
        call_lengths = lengths if lengths is None or n <= 2 else lops.contiguous(lengths[outer][:, 0])
        run(q4, k4, v4, o4, w4, call_lengths, m4)
    if target is not None:
        target[...] = out
        out = target
    return (out, weights) if return_weights else out
