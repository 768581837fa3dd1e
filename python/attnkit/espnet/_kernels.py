"""Kernel boundary of the ESPnet attention family: the per-step hot loops.

``fused_additive_step`` is the one entry point of the additive family: the fused C++ SIMD kernel
``attnkit._core.additive_step`` (src/cpp/cpu/additive.cc). ``fused_additive_step_reference``
below is its definition in NumPy, kept as the kernel's test reference. Everything arrives as
plain arrays already checked by the classes' front doors. The dot-product classes go through
``dot_product_step``, the same kernel with dot-product energies (``gvec_w`` None).

Conventions shared by every function here (index math as tensor indexing):

- an utterance batch of ``B`` entries with ``T`` padded frames, ``lengths[b]`` valid frames;
- ``N`` step rows, row ``n`` attending utterance ``rows[n]`` (beam search: several rows per
  utterance). The encoder-side arrays are never copied per row: rows are grouped by utterance and
  each group reads its utterance's frames once (DESIGN.md principle 8);
- only the valid frames ``t < lengths[rows[n]]`` of ``P``/``values`` are read, so garbage (even
  NaN) in padded frames cannot reach the outputs, and ``out_weights[n, t] == 0`` exactly there.
"""
from __future__ import annotations

import numpy as np

from attnkit import _core
from attnkit._arrays import c_aligned

# The C++ kernel, same signature and contract as fused_additive_step_reference.
fused_additive_step = _core.additive_step


def row_groups(rows: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """Splits step rows by utterance: ``[(b, sel)]`` with ``rows[sel] == b``.

    ``sel`` is a slice when the rows of ``b`` are contiguous (sorted rows, e.g. ESPnet's
    ``row = b * beam + k`` layout), else an index array.
    """
    n = rows.shape[0]
    if n == 1:
        return [(int(rows[0]), slice(0, 1))]
    d = np.diff(rows)
    if np.all(d >= 0):
        cuts = (np.flatnonzero(d) + 1).tolist()
        return [(int(rows[s]), slice(s, e)) for s, e in zip([0] + cuts, cuts + [n])]
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    cuts = (np.flatnonzero(np.diff(srt)) + 1).tolist()
    return [(int(srt[s]), order[s:e]) for s, e in zip([0] + cuts, cuts + [n])]


def location_conv(att_in: np.ndarray, conv_w: np.ndarray) -> np.ndarray:
    """ESPnet's location convolution: ``f [N, C, T]``, on the C++ kernel (src/cpp/cpu/location_conv.cc).

    f[n,c,t] = sum_r sum_j conv_w[c,r,j] * att_in[n,r,t+j-F], with K = 2F+1 and att_in taken as 0
    outside [0, T): a cross-correlation (kernel not flipped), and K may exceed T.
    att_in ``[N, R, T]``, conv_w ``[C, R, K]``, one float dtype.
    """
    att_in, conv_w = c_aligned(att_in), c_aligned(conv_w)
    f = np.empty((att_in.shape[0], conv_w.shape[0], att_in.shape[2]), att_in.dtype)
    _core.location_conv(att_in, conv_w, f)
    return f


def location_conv_reference(att_in: np.ndarray, conv_w: np.ndarray) -> np.ndarray:
    """``location_conv`` in NumPy (im2col and one GEMM), kept as the kernels' test reference."""
    n, r, t = att_in.shape
    k = conv_w.shape[2]
    f = (k - 1) // 2
    padded = np.zeros((n, r, t + 2 * f), dtype=att_in.dtype)
    padded[:, :, f : f + t] = att_in
    win = np.lib.stride_tricks.sliding_window_view(padded, k, axis=2)  # [N, R, T, K] view
    # One explicit im2col copy, then one GEMM: tensordot's own gather from the overlapping-window
    # view measured ~25x slower (12 ms vs 0.5 ms at N=10, T=400, K=201, C=10).
    cols = np.ascontiguousarray(win.transpose(0, 2, 1, 3)).reshape(n * t, r * k)
    return (cols @ conv_w.reshape(conv_w.shape[0], r * k).T).reshape(n, t, conv_w.shape[0]).transpose(0, 2, 1)


def location_term(att_in, conv_w, conv_proj, loc_bias, t0: int = 0, t1: int | None = None,
                  conv=location_conv) -> np.ndarray:
    """g = conv(att_in) conv_proj^T + loc_bias on frames [t0, t1): ``[N, t1-t0, A]``."""
    g = conv(att_in, conv_w)[:, :, t0:t1].transpose(0, 2, 1) @ conv_proj.T
    if loc_bias is not None:
        g += loc_bias
    return g


def _softmax_rows(e: np.ndarray, scaling: float) -> np.ndarray:
    """softmax(scaling * e) over the last axis, in place (torch's max-subtracted form)."""
    e *= scaling
    e -= e.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def fused_additive_step_reference(
    P, values, lengths, rows, q, att_in, conv_w, conv_proj, loc_bias, gvec_w, scaling, out_context, out_weights
) -> None:
    """One additive / location-aware attention step for N rows; writes the outputs in place.

    P ``[B, T, A]`` cached encoder projection; values ``[B, T, Ev]`` (encoder output or one head's
    V; Ev may be 0 when only the weights are wanted); lengths int64 ``[B]``; rows int64 ``[N]``;
    q ``[N, A]`` query term; att_in ``[N, R, T]``, conv_w ``[C, R, K]`` (K = 2F+1) and conv_proj
    ``[A, C]``: all three given (the location term) or all None; loc_bias ``[A]`` or None, part of
    the location term (ignored without it); gvec_w ``[A]``, or None for dot-product energies
    (AttDot; no location term then); scaling > 0.

        f[n,t,c] = sum_r sum_j conv_w[c,r,j] * att_in[n,r,t+j-F]        (0 outside [0, T))
        g[n,t,:] = f[n,t,:] conv_proj^T + loc_bias
        e[n,t]   = sum_a gvec_w[a] * tanh(P[rows[n],t,a] + q[n,a] + g[n,t,a])
                   (gvec_w None: e[n,t] = sum_a P[rows[n],t,a] * q[n,a])
        w[n,:]   = softmax(scaling * e[n, :L]),  L = lengths[rows[n]];  w[n, L:] = 0
        out_weights[n] = w[n]            [N, T]
        out_context[n] = sum_{t<L} w[n,t] * values[rows[n],t]   [N, Ev]

    gvec's bias is a constant shift of e and cancels in the softmax, so it is not an argument.
    All lengths must be >= 1. Every
    array is C-contiguous and of one float dtype (the contract of the C++ kernel that replaces
    this one, ``attnkit._core.additive_step``, which checks it).
    """
    g = None
    if att_in is not None:
        g = location_term(att_in, conv_w, conv_proj, loc_bias, 0, int(lengths[rows].max()),
                          conv=location_conv_reference)
    out_weights[...] = 0
    for b, sel in row_groups(rows):
        n_valid = int(lengths[b])
        if gvec_w is None:
            w = _softmax_rows(q[sel] @ P[b, :n_valid].T, scaling)  # [n, L]
            out_weights[sel, :n_valid] = w
            out_context[sel] = w @ values[b, :n_valid]
            continue
        x = P[b, None, :n_valid] + q[sel, None, :]  # [n, L, A]: the one per-step temporary
        if g is not None:
            x += g[sel, :n_valid]
        np.tanh(x, out=x)
        # 2-D GEMV: a 3-D ``x @ gvec_w`` runs as a batched matmul, ~7x slower here.
        w = _softmax_rows((x.reshape(-1, x.shape[2]) @ gvec_w).reshape(x.shape[:2]), scaling)  # [n, L]
        out_weights[sel, :n_valid] = w
        out_context[sel] = w @ values[b, :n_valid]


def fused_additive_step_windowed(
    P, values, lengths, rows, q, att_in, conv_w, conv_proj, gvec_w, scaling, bounds, out_context, out_weights
) -> None:
    """``fused_additive_step`` with each row's softmax restricted to frames ``[lo_n, hi_n)``.

    ESPnet's attention window (Deep Voice 3 constraint, B = 1 there) sets the energies outside the
    window to -inf before the softmax. That equals running the fused kernel on the window's frames
    alone, with the location term (whose convolution still reads the whole att_in) folded into P.
    bounds ``[N, 2]`` int64, already clipped to ``0 <= lo < hi <= lengths[rows[n]]`` by the caller.
    """
    out_weights[...] = 0
    one, zero = np.ones(1, np.int64), np.zeros(1, np.int64)
    for n in range(rows.shape[0]):
        b, (lo, hi) = int(rows[n]), (int(x) for x in bounds[n])
        p_win = P[b : b + 1, lo:hi] + location_term(att_in[n : n + 1], conv_w, conv_proj, None, lo, hi)
        fused_additive_step(
            p_win, values[b : b + 1, lo:hi], one * (hi - lo), zero, q[n : n + 1], None, None, None, None,
            gvec_w, scaling, out_context[n : n + 1], out_weights[n : n + 1, lo:hi],
        )


def weighted_sum(w: np.ndarray, values: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
                 valid_only: bool) -> np.ndarray:
    """out[n] = sum_t w[n,t] values[rows[n],t] -> ``[N, Ev]``, over t < lengths[rows[n]] when
    ``valid_only``, else over all T frames (ESPnet's Forward family, whose weights leak into the
    padding). w ``[N, T]``, values ``[B, T, Ev]``, one float dtype; rows and lengths int64. On the
    C++ kernel (src/cpp/cpu/weighted_sum.cc), the fused step's context tiles."""
    out = np.empty((w.shape[0], values.shape[2]), dtype=values.dtype)
    _core.weighted_sum(c_aligned(w), c_aligned(values), c_aligned(rows), c_aligned(lengths) if valid_only else None,
                       out)
    return out


def weighted_sum_reference(w: np.ndarray, values: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
                           valid_only: bool) -> np.ndarray:
    """``weighted_sum`` in NumPy, one matrix product per utterance: the kernel's test twin."""
    out = np.empty((w.shape[0], values.shape[2]), dtype=values.dtype)
    for b, sel in row_groups(rows):
        end = int(lengths[b]) if valid_only else values.shape[1]
        out[sel] = w[sel, :end] @ values[b, :end]
    return out


def _kernel_keys(K: np.ndarray) -> np.ndarray:
    """One head's keys ``[B, T, A]`` as the kernel reads them: unchanged if frames-inner (each
    utterance a C-contiguous [A, T] block) or C-contiguous, else a C-contiguous copy."""
    s = K.strides
    if K.shape[1] > 1 and s[1] == K.itemsize and s[2] == K.shape[1] * K.itemsize and s[0] >= K.shape[2] * s[2]:
        return K
    return np.ascontiguousarray(K)


def dot_product_step(K, values, lengths, rows, q, scaling, out_context, out_weights) -> None:
    """softmax(scaling * <K[rows[n], t], q[n]>) over the valid frames, and the weighted values.

    Single head: K ``[B, T, A]``, values ``[B, T, Ev]``, q ``[N, A]``, out_context ``[N, Ev]``,
    out_weights ``[N, T]``. Multi-head: K ``[B, H, T, A]``, values ``[B, H, T, Ev]``, q
    ``[N, H, A]``, out_context ``[N, H, Ev]``, out_weights ``[N, H, T]``.

    Runs on the fused step kernel with dot-product energies, in one call for every head: head h
    of utterance b is utterance h * B + b of the call, and row (n, h) attends it (the multi-head
    classes store K and V head-major, so the [H * B, ...] arrays are views). K may be C-contiguous
    or the [.., T, A] view of [.., A, T] storage (the classes' caches), which the kernel reads
    frames-inner. Rows of one utterance share each block of K read from memory. (The SDPA kernel,
    used here before, packs K on every call: 74 us for AttDot's N=10 T=200 A=320 step on one
    thread. A call per head: AttMultiHeadDot, 4 heads, N=10 utterances, T=200, 96 us median
    against 90 us in one call, the same bits.)
    """
    if K.ndim == 3:
        fused_additive_step(K, values, lengths, rows, q, None, None, None, None, None, scaling, out_context, out_weights)
        return
    B, H, T = K.shape[:3]
    N = rows.shape[0]
    heads_first = lambda x: x.transpose(1, 0, 2, 3).reshape(H * B, T, x.shape[3])
    head_rows = (np.arange(H)[:, None] * B + rows[None, :]).reshape(-1)  # row (h, n) -> utterance h * B + rows[n]
    head_lengths = np.repeat(lengths[None], H, axis=0).reshape(-1)
    ctx = np.empty((H, N, out_context.shape[2]), out_context.dtype)
    w = np.empty((H, N, T), out_weights.dtype)
    fused_additive_step(_kernel_keys(heads_first(K)), c_aligned(heads_first(values)), head_lengths, head_rows,
                        c_aligned(q.transpose(1, 0, 2).reshape(H * N, -1)), None, None, None, None, None, scaling,
                        ctx.reshape(H * N, -1), w.reshape(H * N, T))
    out_context[...] = ctx.transpose(1, 0, 2)
    out_weights[...] = w.transpose(1, 0, 2)
