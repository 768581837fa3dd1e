"""The fused C++ additive-attention step against its NumPy definition, on every ISA."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.espnet._kernels import fused_additive_step_reference as numpy_step
from conftest import assert_close


def case(rng, dtype, B, T, A, Ev, N, C, R, K, lengths, with_bias, dot=False):
    P = rng.standard_normal((B, T, A)).astype(dtype)
    values = rng.standard_normal((B, T, Ev)).astype(dtype)
    lengths = np.asarray(lengths, np.int64)
    rows = rng.integers(0, B, N).astype(np.int64)
    q = rng.standard_normal((N, A)).astype(dtype)
    loc = {}
    if C:
        att_in = rng.random((N, R, T)).astype(dtype)
        loc = dict(att_in=att_in, conv_w=rng.standard_normal((C, R, K)).astype(dtype),
                   conv_proj=(rng.standard_normal((A, C)) / np.sqrt(C)).astype(dtype),
                   loc_bias=rng.standard_normal(A).astype(dtype) if with_bias else None)
    else:
        loc = dict(att_in=None, conv_w=None, conv_proj=None, loc_bias=None)
    return dict(P=P, values=values, lengths=lengths, rows=rows, q=q, **loc,
                # 1/sqrt(A), ESPnet's init scale: energies of order 1, as in a trained model.
                gvec_w=None if dot else (rng.standard_normal(A) / np.sqrt(A)).astype(dtype), scaling=2.0)


def run_both(args, dtype):
    """(float64 reference on the same inputs, the kernel in dtype)."""
    N, T, Ev = args["q"].shape[0], args["P"].shape[1], args["values"].shape[2]
    args64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
              for k, v in args.items()}
    ctx_ref, w_ref = np.full((N, Ev), np.nan), np.full((N, T), np.nan)
    numpy_step(**args64, out_context=ctx_ref, out_weights=w_ref)
    ctx, w = np.full((N, Ev), np.nan, dtype), np.full((N, T), np.nan, dtype)
    _core.additive_step(**args, out_context=ctx, out_weights=w)
    return (ctx_ref, w_ref), (ctx, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "B,T,A,Ev,N,C,R,K,lengths",
    [
        (1, 1, 1, 1, 1, 0, 0, 0, [1]),           # AttAdd at its smallest
        (3, 9, 6, 7, 5, 3, 1, 9, [5, 9, 3]),     # AttLoc, kernel 9 > some lengths
        (2, 37, 33, 17, 10, 10, 1, 201, [37, 20]),  # recipe-like conv (F=100) wider than T
        (2, 50, 320, 320, 10, 10, 1, 201, [50, 31]),  # recipe sizes
        (2, 12, 8, 5, 4, 1, 1, 1, [12, 7]),      # AttCov: C = R = K = 1
        (2, 11, 9, 4, 6, 4, 3, 5, [11, 6]),      # AttLoc2D: window of 3 rows
        (4, 17, 16, 0, 8, 2, 1, 3, [17, 16, 1, 9]),  # Ev = 0: weights only (Forward family)
    ],
)
def test_kernel_matches_numpy_definition(isa, rng, dtype, B, T, A, Ev, N, C, R, K, lengths):
    for with_bias in (False, True):
        args = case(rng, dtype, B, T, A, Ev, N, C, R, K, lengths, with_bias)
        (ctx_ref, w_ref), (ctx, w) = run_both(args, dtype)
        assert_close(w, w_ref, dtype, f"weights isa={isa}")
        assert_close(ctx, ctx_ref, dtype, f"context isa={isa}")
        L = args["lengths"][args["rows"]]
        assert all(np.all(w[n, L[n]:] == 0) for n in range(len(L)))


def keys_layout(P, layout, heads=3):
    """P [B, T, A] as the kernel may get it: C-contiguous ("rows"), the [B, T, A] view of
    [B, A, T] storage ("frames", AttDot's cache), or that of one head of [B, H, A, T] storage
    ("head", the multi-head cache: utterances further apart than one block)."""
    if layout == "rows":
        return P
    if layout == "frames":
        return np.ascontiguousarray(P.transpose(0, 2, 1)).transpose(0, 2, 1)
    storage = np.zeros((P.shape[0], heads, P.shape[2], P.shape[1]), P.dtype)
    storage[:, 1] = P.transpose(0, 2, 1)
    return storage[:, 1].transpose(0, 2, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T,A,Ev,N,lengths", [
    (1, 1, 1, 1, 1, [1]),
    (3, 9, 6, 7, 5, [5, 9, 3]),           # frames that straddle the 8-frame transposes
    (2, 37, 33, 17, 10, [37, 20]),       # A with a tail; frame tiles of 16 and a tail
    (2, 200, 320, 320, 10, [200, 131]),  # recipe sizes
    (3, 41, 7, 5, 17, [41, 2, 40]),      # slices of 8 rows (5 + 3 row tiles), unsorted rows
])
@pytest.mark.parametrize("layout", ["rows", "frames", "head"])
def test_dot_energies_match_numpy_definition(isa, rng, dtype, B, T, A, Ev, N, lengths, layout):
    """gvec_w None: AttDot's energies, <P[rows[n], t], q[n]>, with the keys in any layout the
    kernel reads."""
    args = case(rng, dtype, B, T, A, Ev, N, 0, 0, 0, lengths, False, dot=True)
    args["P"] = keys_layout(np.tanh(args["P"]), layout)  # AttDot's keys and query are tanh projections
    args["q"] = np.tanh(args["q"])
    (ctx_ref, w_ref), (ctx, w) = run_both(args, dtype)
    assert_close(w, w_ref, dtype, f"weights isa={isa}")
    assert_close(ctx, ctx_ref, dtype, f"context isa={isa}")


def test_frames_inner_keys_only_for_dot_energies(rng):
    """A [B, T, A] view of [B, A, T] storage is the dot-product energies' layout; the additive
    energies need C-contiguous keys."""
    args = case(rng, np.float32, 2, 9, 6, 7, 3, 0, 0, 0, [9, 4], False)
    args["P"] = keys_layout(args["P"], "frames")
    with pytest.raises(ValueError, match="P must be C-contiguous"):
        _core.additive_step(**args, out_context=np.empty((3, 7), np.float32), out_weights=np.empty((3, 9), np.float32))
    # Frames-inner keys whose utterances overlap (a broadcast) are refused, not read twice.
    dot = case(rng, np.float32, 2, 9, 6, 7, 3, 0, 0, 0, [9, 4], False, dot=True)
    dot["P"] = np.broadcast_to(keys_layout(dot["P"][:1], "frames"), (2, 9, 6))
    with pytest.raises(ValueError, match="P must be aligned, with utterances that do not overlap"):
        _core.additive_step(**dot, out_context=np.empty((3, 7), np.float32), out_weights=np.empty((3, 9), np.float32))



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T,A,Ev,N,C,K,lengths,dot", [
    (1, 200, 320, 320, 1, 10, 201, [200], False),  # one hypothesis at recipe sizes
    (1, 1000, 40, 33, 2, 3, 201, [1000], False),   # Ev with a tail, columns split unevenly
    (2, 61, 9, 7, 3, 2, 21, [61, 40], False),      # utterances of unequal lengths
    (1, 13, 5, 3, 1, 0, 0, [13], False),           # two energy blocks, the second of one frame
    (1, 203, 37, 17, 1, 0, 0, [203], True),        # dot-product energies
    (1, 203, 37, 17, 3, 0, 0, [203], "frames"),    # dot-product energies, keys frames-inner
])
def test_kernel_bits_do_not_depend_on_the_thread_count(isa, rng, dtype, B, T, A, Ev, N, C, K, lengths, dot):
    """With fewer row slices than threads (one hypothesis on 2 threads), the kernel cuts the
    frames and the context's columns across threads: every thread count gives the same bits, as a
    frame's energy and a context element are summed in the same order whoever owns them."""
    args = case(rng, dtype, B, T, A, Ev, N, C, 1, K, lengths, False, dot=bool(dot))
    if dot == "frames":
        args["P"] = keys_layout(args["P"], "frames")
    before = attnkit.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3, 5, 16):
            attnkit.set_num_threads(threads)
            ctx, w = np.full((N, Ev), np.nan, dtype), np.full((N, T), np.nan, dtype)
            _core.additive_step(**args, out_context=ctx, out_weights=w)
            outs.append((ctx, w))
    finally:
        attnkit.set_num_threads(before)
    (ctx_ref, w_ref), _ = run_both(args, dtype)
    assert_close(outs[0][1], w_ref, dtype, f"weights isa={isa}")
    assert_close(outs[0][0], ctx_ref, dtype, f"context isa={isa}")
    for ctx, w in outs[1:]:
        np.testing.assert_array_equal(w, outs[0][1])
        np.testing.assert_array_equal(ctx, outs[0][0])


@pytest.mark.parametrize("dot", [False, True])
def test_kernel_with_no_rows_does_nothing(rng, dot):
    """N = 0 (the private entry allows it; the modules refuse empty rows): no work, no error."""
    args = case(rng, np.float32, 2, 9, 6, 7, 1, 0 if dot else 3, 1, 5, [9, 4], False, dot=dot)
    args.update(rows=np.zeros(0, np.int64), q=args["q"][:0])
    if not dot:
        args["att_in"] = args["att_in"][:0]
    _core.additive_step(**args, out_context=np.empty((0, 7), np.float32), out_weights=np.empty((0, 9), np.float32))

def test_kernel_errors_name_the_argument(rng):
    args = case(rng, np.float32, 2, 5, 4, 3, 3, 2, 1, 3, [5, 4], False)
    ctx, w = np.empty((3, 3), np.float32), np.empty((3, 5), np.float32)
    bad = dict(args, lengths=np.array([5, 0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\], got lengths\[1\]=0"):
        _core.additive_step(**bad, out_context=ctx, out_weights=w)
    bad = dict(args, rows=np.array([0, 2, 1]))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, B=2\), got rows\[1\]=2"):
        _core.additive_step(**bad, out_context=ctx, out_weights=w)
    bad = dict(args, q=args["q"][:, :3].copy())
    with pytest.raises(ValueError, match=r"q must have shape \(3, 4\), got \(3, 3\)"):
        _core.additive_step(**bad, out_context=ctx, out_weights=w)
    bad = dict(args, q=args["q"].astype(np.float64))
    with pytest.raises(TypeError, match="q has dtype float64"):
        _core.additive_step(**bad, out_context=ctx, out_weights=w)
    with pytest.raises(ValueError, match=r"dot-product energies \(gvec_w None\) take no location term"):
        _core.additive_step(**dict(args, gvec_w=None), out_context=ctx, out_weights=w)
    with pytest.raises(ValueError, match="scaling must be a finite number > 0"):
        _core.additive_step(**dict(args, scaling=0.0), out_context=ctx, out_weights=w)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _core.additive_step(**dict(args, P=np.asfortranarray(args["P"])), out_context=ctx, out_weights=w)
    raw = np.zeros(args["q"].nbytes + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, np.float32, args["q"].size, offset=1).reshape(args["q"].shape)
    misaligned[...] = args["q"]
    with pytest.raises(ValueError, match="q must be aligned to its item size"):
        _core.additive_step(**dict(args, q=misaligned), out_context=ctx, out_weights=w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# Tiles: one row x W outputs (N = 1, or a last block of one row: N = 17), two rows x W/2. From
# 4 units of 48 rows per thread a packed product's tasks are row units x all outputs (N = 250, 1001).
@pytest.mark.parametrize("N,K,A", [(1, 1, 1), (1, 19, 45), (3, 7, 5), (10, 320, 320), (17, 9, 37), (41, 33, 130),
                                   (250, 21, 70), (1001, 13, 37)])
@pytest.mark.parametrize("packed", [False, True])
def test_step_linear_matches_numpy(isa, rng, dtype, N, K, A, packed):
    from attnkit._linear import PackedWeight, linear

    x, w, b = rng.standard_normal((N, K)), rng.standard_normal((A, K)), rng.standard_normal(A)
    ref = x @ w.T
    weight = PackedWeight(w.astype(dtype)) if packed else w.astype(dtype)
    assert_close(linear(x.astype(dtype), weight), ref, dtype, "linear")
    assert_close(linear(x.astype(dtype), weight, b.astype(dtype)), ref + b, dtype, "linear + bias")
    assert_close(linear(x.astype(dtype), weight, b.astype(dtype), tanh=True), np.tanh(ref + b), dtype, "tanh(linear)")
    assert_close(linear(x.astype(dtype), weight, tanh=True), np.tanh(ref), dtype, "tanh(linear), no bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# A and K around the vector widths and the 64-byte panels (16 float32, 8 float64 outputs); big
# enough to run on the pool (A * K >= 2^16).
@pytest.mark.parametrize("A,K", [(1, 1), (1, 100), (100, 1), (7, 9), (16, 16), (17, 33), (33, 8), (300, 257)])
def test_panels_are_the_weight_transposed_in_blocks(isa, rng, dtype, A, K):
    from attnkit._linear import PackedWeight

    w = rng.standard_normal((A, K)).astype(dtype)
    P = 64 // w.itemsize
    padded = np.zeros((-(-A // P) * P, K), dtype)
    padded[:A] = w
    want = padded.reshape(-1, P, K).transpose(0, 2, 1)
    for weight in (w, np.asfortranarray(w), w[::-1][::-1]):  # any layout in
        packed = PackedWeight(weight, half=False)
        np.testing.assert_array_equal(packed.panels, want)
        np.testing.assert_array_equal(packed.unpacked(), w)


def test_packed_linear_checks_the_panels(rng):
    from attnkit._linear import PackedWeight

    x, w = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((20, 5)).astype(np.float32)
    packed = PackedWeight(w)
    assert packed.panels.shape == (2, 5, 16) and packed.shape == (20, 5)
    with pytest.raises(ValueError, match=r"weight must be .* shape \(1, 5, 16\), got float32 \(2, 5, 16\)"):
        _core.linear(x, packed.panels, None, np.empty((2, 16), np.float32), packed=True)
    with pytest.raises(TypeError, match=r"weight 3-D \(packed\)"):
        _core.linear(x, w, None, np.empty((2, 20), np.float32), packed=True)
    with pytest.raises(TypeError, match="PackedWeight: weight must be a 2-D float32 or float64 array"):
        PackedWeight(w.astype(np.int32))
    with pytest.raises(ValueError, match=r"panels must be .* shape \(2, 5, 16\), got float32 \(1, 5, 16\)"):
        _core.pack_linear_weight(w, np.empty((1, 5, 16), np.float32))
    frozen = np.empty((2, 5, 16), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="panels must be writeable and apart from weight"):
        _core.pack_linear_weight(w, frozen)


@pytest.mark.parametrize("packed", [False, True])
def test_linear_copies_a_misaligned_input(rng, packed):
    """np.ascontiguousarray keeps a misaligned view; linear must not hand it to the kernel."""
    from attnkit._linear import PackedWeight, linear

    x, w = rng.standard_normal((3, 7)), rng.standard_normal((5, 7))
    raw = np.zeros(x.size * 8 + 1, np.uint8)
    view = np.frombuffer(raw.data, dtype=np.float64, count=x.size, offset=1).reshape(x.shape)
    view[...] = x
    assert not view.flags.aligned
    got = linear(view, PackedWeight(w) if packed else w)
    assert_close(got, x @ w.T, np.float64, "linear of a misaligned x")
    with pytest.raises(ValueError, match="x must be an aligned, C-contiguous array"):
        _core.linear(view, w, None, np.empty((3, 5)))


@pytest.mark.parametrize("B", [1, 3])
def test_dot_classes_hand_their_cached_keys_to_the_kernel_uncopied(rng, B):
    """AttDot's and each head of AttMultiHeadDot's cached keys are frames-inner views that the
    kernel reads as they are; other layouts get a C-contiguous copy."""
    from attnkit.espnet import AttDot, AttMultiHeadDot
    from attnkit.espnet._kernels import _kernel_keys

    enc, lengths = rng.standard_normal((B, 20, 32)).astype(np.float32), np.full(B, 20)
    multi = AttMultiHeadDot(32, 16, 4, 8, 8, seed=0).prepare(enc, lengths)
    single = AttDot(32, 16, 8, seed=0).prepare(enc, lengths)
    for keys in [single.keys] + [multi.keys[:, h] for h in range(4)]:
        assert keys.shape == (B, 20, 8) and _kernel_keys(keys) is keys
    c_order = np.ascontiguousarray(single.keys)
    assert _kernel_keys(c_order) is c_order
    every_other_frame = np.repeat(single.keys, 2, axis=1)[:, ::2]
    copied = _kernel_keys(every_other_frame)
    assert copied.flags.c_contiguous and np.array_equal(copied, single.keys)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 2])
def test_siblings_share_their_location_work_with_the_same_numbers(isa, rng, dtype, B):
    """Siblings of a beam share their parent's weights: the kernel computes the location features
    and their projection once per group of rows with the same att_in. A row's numbers do not
    depend on the order of the rows or on the thread count (which decide the groups: with one
    utterance the rows are cut into as many slices as threads, down to one row each)."""
    args = case(rng, dtype, B, 61, 33, 17, 7, 4, 1, 21, [61, 40][:B], False)
    args["rows"] = np.array([0, 0, 1, 0, 1, 0, 1], np.int64) % B
    att = args["att_in"]
    att[1] = att[3] = att[0]  # three siblings of utterance 0
    att[4] = att[2]           # two of utterance 1
    att[5] = att[0]
    att[5, 0, 7] = np.nextafter(att[0, 0, 7], dtype(2))  # one bit away: not a sibling
    N, T, Ev = 7, 61, 17

    def run(a, threads):
        attnkit.set_num_threads(threads)
        ctx, w = np.empty((N, Ev), dtype), np.empty((N, T), dtype)
        _core.additive_step(**a, out_context=ctx, out_weights=w)
        return ctx, w

    before = attnkit.get_num_threads()
    try:
        ctx, w = run(args, 1)
        for threads in (2, 3, 5, 16):
            c2, w2 = run(args, threads)
            np.testing.assert_array_equal(w2, w)
            np.testing.assert_array_equal(c2, ctx)
        perm = np.array([6, 3, 5, 0, 2, 4, 1])
        shuffled = dict(args, rows=args["rows"][perm], q=args["q"][perm], att_in=att[perm])
        c3, w3 = run(shuffled, 2)
        np.testing.assert_array_equal(w3, w[perm])
        np.testing.assert_array_equal(c3, ctx[perm])
    finally:
        attnkit.set_num_threads(before)
    (ctx_ref, w_ref), _ = run_both(args, dtype)
    assert_close(w, w_ref, dtype, f"weights isa={isa}")
    assert_close(ctx, ctx_ref, dtype, f"context isa={isa}")
