"""attnkit.scaled_dot_product_attention against the float64 reference, on every ISA."""
import numpy as np
import pytest

import attnkit
from conftest import assert_close
from reference import sdpa as ref_sdpa

sdpa = attnkit.scaled_dot_product_attention

HEAD_DIMS = [1, 7, 8, 15, 16, 33, 64, 80, 128]
KEY_LENGTHS = [1, 2, 17, 129, 1025]
# Query counts that hit the few-rows path (1, 2, 5) and one and several query blocks of the tiled
# path (49, 97).
QUERY_LENGTHS = [1, 2, 5, 49, 97]


def make(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("Tk", KEY_LENGTHS)
def test_matches_reference(isa, rng, dtype, D, Tk):
    Tq = QUERY_LENGTHS[(D + Tk) % len(QUERY_LENGTHS)]
    Dv = D if D % 2 else D + 3  # Dv != D half of the time
    B, H = 3, 2
    q, k, v = make(rng, (B, H, Tq, D), dtype), make(rng, (B, H, Tk, D), dtype), make(rng, (B, H, Tk, Dv), dtype)
    lengths = np.array([Tk, max(1, Tk // 3), max(1, Tk - 1)])  # unsorted
    for kl in (None, lengths):
        out, w = sdpa(q, k, v, key_lengths=kl, return_weights=True)
        ref, ref_w = ref_sdpa(q, k, v, key_lengths=kl)
        assert out.dtype == dtype and out.shape == (B, H, Tq, Dv) and w.shape == (B, H, Tq, Tk)
        assert_close(out, ref, dtype, f"out isa={isa} kl={kl is not None}")
        assert_close(w, ref_w, dtype, f"weights isa={isa}")


@pytest.mark.parametrize("Tq", [*range(1, 18), 20, 23, 24, 25, 31, 32, 33])
def test_few_query_rows_match_reference(isa, rng, Tq):
    """The query counts of the few-rows path (keys read in place; groups of W = 4-16 rows with lanes
    over the rows, whole or with missing rows, then row pairs and an odd row with lanes over d;
    tiles of 1-6 rows in the context) and of the tiled path beside it, against key counts around
    the score blocks (24 keys, 48 on AVX-512), the lanes-over-d tiles (8, 16) and the 64-key
    context blocks, head sizes with partial vectors, key lengths and causality (Tq > Tk included)."""
    for Tk, D, Dv in [(1, 5, 3), (7, 8, 8), (9, 17, 12), (16, 64, 64), (17, 33, 70), (24, 7, 5), (48, 16, 16),
                      (65, 24, 9), (130, 80, 130)]:
        for dtype in (np.float32, np.float64):
            q, k, v = make(rng, (2, 2, Tq, D), dtype), make(rng, (2, 2, Tk, D), dtype), make(rng, (2, 2, Tk, Dv), dtype)
            for kw in ({}, {"key_lengths": [max(1, Tk - 3), Tk]}, {"causal": True}, {"causal": "lower_right"}):
                out, w = sdpa(q, k, v, return_weights=True, **kw)
                ref, ref_w = ref_sdpa(q, k, v, **kw)
                assert_close(out, ref, dtype, f"out Tq={Tq} Tk={Tk} D={D} Dv={Dv} {kw}")
                assert_close(w, ref_w, dtype, f"weights Tq={Tq} Tk={Tk} {kw}")


CAUSAL_SHAPES = [(1, 1), (1, 300), (2, 40), (7, 7), (60, 60), (20, 150), (130, 70), (49, 1)]


@pytest.mark.parametrize("Tq,Tk", CAUSAL_SHAPES)
@pytest.mark.parametrize("causal", [True, "upper_left", "lower_right"])
def test_causal_variants_match_reference(isa, rng, Tq, Tk, causal):
    q, k, v = make(rng, (2, 2, Tq, 16), np.float64), make(rng, (2, 2, Tk, 16), np.float64), make(rng, (2, 2, Tk, 9), np.float64)
    for kl in (None, [Tk, max(1, Tk // 2)]):
        out, w = sdpa(q, k, v, causal=causal, key_lengths=kl, return_weights=True)
        ref, ref_w = ref_sdpa(q, k, v, causal=causal, key_lengths=kl)
        assert_close(out, ref, np.float64, f"causal={causal!r} out")
        assert_close(w, ref_w, np.float64, f"causal={causal!r} weights")
    if causal == "lower_right" and Tq > Tk:  # the first Tq - Tk queries see no key at all
        assert np.all(out[:, :, : Tq - Tk] == 0)
    if causal != "lower_right":  # query i sees keys 0..i, the first query key 0 alone
        assert np.all(w[..., 0, 1:] == 0) and np.allclose(w[..., 0, 0], 1)


@pytest.mark.parametrize("Tq,Tk", CAUSAL_SHAPES)
def test_causal_matches_torch_is_causal(rng, Tq, Tk):
    """causal=True is torch's is_causal (upper left), "lower_right" torch's causal_lower_right."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention.bias import causal_lower_right

    q, k = make(rng, (2, 3, Tq, 16), np.float32), make(rng, (2, 3, Tk, 16), np.float32)
    v = make(rng, (2, 3, Tk, 9), np.float32)
    qt, kt, vt = map(torch.from_numpy, (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True).numpy()
    np.testing.assert_allclose(sdpa(q, k, v, causal=True), want, rtol=0, atol=2e-6)
    if Tq <= Tk:  # torch gives NaN to the queries that see no key; attnkit gives zeros
        lower_right = causal_lower_right(Tq, Tk)
        want = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=lower_right).numpy()
        np.testing.assert_allclose(sdpa(q, k, v, causal="lower_right"), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("causal", ["yes", "upper-left", 1, np.array([True, False])])
def test_causal_rejects_other_values(rng, causal):
    q = make(rng, (1, 1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="causal must be False, True .* or 'lower_right', got"):
        sdpa(q, q, q, causal=causal)


@pytest.mark.parametrize("mask_shape", [(19,), (6, 19), (2, 1, 1, 19), (2, 3, 6, 19), (1, 3, 1, 1)])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_explicit_masks_broadcast(isa, rng, mask_shape, kind):
    q, k, v = make(rng, (2, 3, 6, 8), np.float32), make(rng, (2, 3, 19, 8), np.float32), make(rng, (2, 3, 19, 5), np.float32)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = rng.standard_normal(mask_shape).astype(np.float32)
        mask[rng.random(mask_shape) < 0.2] = -np.inf
    for kwargs in ({}, {"key_lengths": [12, 19]}, {"causal": True}):
        out, w = sdpa(q, k, v, mask=mask, return_weights=True, **kwargs)
        ref, ref_w = ref_sdpa(q, k, v, mask=mask, **kwargs)
        assert_close(out, ref, np.float32, f"{kind} mask {mask_shape} {kwargs}")
        assert_close(w, ref_w, np.float32, "weights")


@pytest.mark.parametrize("Tq", [1, 3, 50])
def test_fully_masked_rows_give_zeros_not_nan(isa, rng, Tq):
    q, k, v = make(rng, (3, 2, Tq, 8), np.float32), make(rng, (3, 2, 10, 8), np.float32), make(rng, (3, 2, 10, 8), np.float32)
    out, w = sdpa(q, k, v, key_lengths=[0, 10, 0], return_weights=True)
    assert np.all(out[[0, 2]] == 0) and np.all(w[[0, 2]] == 0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    all_false = np.zeros((Tq, 10), dtype=bool)
    assert np.all(sdpa(q, k, v, mask=all_false) == 0)
    minus_inf = np.full((Tq, 10), -np.inf, dtype=np.float32)
    assert np.all(sdpa(q, k, v, mask=minus_inf) == 0)


@pytest.mark.parametrize("Tq", [1, 40])
def test_padding_garbage_never_leaks(isa, rng, Tq):
    q, k, v = make(rng, (2, 1, Tq, 16), np.float32), make(rng, (2, 1, 70, 16), np.float32), make(rng, (2, 1, 70, 16), np.float32)
    lengths = [33, 70]
    k[0, :, 33:] = np.nan
    v[0, :, 33:] = np.inf
    out = sdpa(q, k, v, key_lengths=lengths)
    ref, _ = ref_sdpa(q[:, :, :, :], np.nan_to_num(k, nan=0.0), np.where(np.isinf(v), 0, v), key_lengths=lengths)
    assert np.all(np.isfinite(out))
    assert_close(out, ref, np.float32, "garbage in padding")


def test_three_d_inputs(isa, rng):
    q, k, v = make(rng, (4, 9, 16), np.float32), make(rng, (4, 21, 16), np.float32), make(rng, (4, 21, 3), np.float32)
    mask = rng.random((9, 21)) > 0.2
    out, w = sdpa(q, k, v, key_lengths=[21, 5, 1, 13], mask=mask, return_weights=True)
    ref, ref_w = ref_sdpa(q, k, v, key_lengths=[21, 5, 1, 13], mask=mask)
    assert out.shape == (4, 9, 3) and w.shape == (4, 9, 21)
    assert_close(out, ref, np.float32, "3-D")
    assert_close(w, ref_w, np.float32, "3-D weights")


def test_strided_views_are_read_in_place(isa, rng):
    B, T, H, Dh = 2, 37, 4, 16
    x = make(rng, (B, T, 3, H, Dh), np.float32)  # a packed qkv projection
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, H, T, Dh] views
    assert not q.flags.c_contiguous
    ref, _ = ref_sdpa(q, k, v)
    assert_close(sdpa(q, k, v), ref, np.float32, "head views")
    # negative strides, broadcast (zero-stride) keys, a non-contiguous last axis
    qr = q[:, :, ::-1]
    kb = np.broadcast_to(k[:1], k.shape)
    vn = make(rng, (B, H, T, 2 * Dh), np.float32)[..., ::2]
    ref, _ = ref_sdpa(qr, kb, vn)
    assert_close(sdpa(qr, kb, vn), ref, np.float32, "negative/zero/odd strides")


def test_out_is_validated_and_reused(rng):
    q, k, v = make(rng, (2, 2, 5, 8), np.float32), make(rng, (2, 2, 7, 8), np.float32), make(rng, (2, 2, 7, 4), np.float32)
    out = np.full((2, 2, 5, 4), np.nan, dtype=np.float32)
    assert sdpa(q, k, v, out=out) is out
    assert_close(out, ref_sdpa(q, k, v)[0], np.float32, "out=")
    # a strided out: write heads into [B, T, H, Dv] through a transposed view
    buf = np.full((2, 5, 2, 4), np.nan, dtype=np.float32)
    sdpa(q, k, v, out=buf.transpose(0, 2, 1, 3))
    assert_close(buf.transpose(0, 2, 1, 3), ref_sdpa(q, k, v)[0], np.float32, "strided out")


def test_scale_and_float64_precision(isa, rng):
    q, k, v = make(rng, (1, 2, 30, 24), np.float64), make(rng, (1, 2, 300, 24), np.float64), make(rng, (1, 2, 300, 24), np.float64)
    for scale in (0.01, 1.0, 3.7):
        out = sdpa(q, k, v, scale=scale)
        assert_close(out, ref_sdpa(q, k, v, scale=scale)[0], np.float64, f"scale {scale}")


def test_decode_split_over_keys_matches(rng):
    """One query row over many keys splits the keys across threads; the merge must be exact."""
    q, k, v = make(rng, (1, 1, 1, 64), np.float32), make(rng, (1, 1, 5000, 64), np.float32), make(rng, (1, 1, 5000, 64), np.float32)
    before = attnkit.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 5):
            attnkit.set_num_threads(threads)
            out, w = sdpa(q, k, v, key_lengths=[4321], return_weights=True)
            assert_close(out, ref_sdpa(q, k, v, key_lengths=[4321])[0], np.float32, f"threads={threads}")
            assert_close(w, ref_sdpa(q, k, v, key_lengths=[4321])[1], np.float32, "weights")
            again = sdpa(q, k, v, key_lengths=[4321])
            assert np.array_equal(out, again), "not bitwise reproducible at a fixed thread count"
            results[threads] = out
    finally:
        attnkit.set_num_threads(before)


@pytest.mark.parametrize("Tq", [6, 10, 16])
def test_few_rows_split_over_keys_matches(rng, Tq):
    """Several query rows of one head over many keys: the key ranges go to different tasks, and each
    row's partial results merge to the reference, causal rows with different limits included."""
    q, k, v = make(rng, (1, 1, Tq, 40), np.float32), make(rng, (1, 1, 3000, 40), np.float32), make(rng, (1, 1, 3000, 23), np.float32)
    before = attnkit.get_num_threads()
    try:
        for threads in (1, 2, 5):
            attnkit.set_num_threads(threads)
            for kw in ({"key_lengths": [2711]}, {"causal": True}, {"mask": rng.random((Tq, 3000)) > 0.5}):
                out, w = sdpa(q, k, v, return_weights=True, **kw)
                ref, ref_w = ref_sdpa(q, k, v, **kw)
                assert_close(out, ref, np.float32, f"threads={threads} {kw}")
                assert_close(w, ref_w, np.float32, f"weights threads={threads}")
    finally:
        attnkit.set_num_threads(before)


def test_results_do_not_depend_on_thread_count_in_tiled_path(rng):
    q, k, v = make(rng, (3, 2, 100, 32), np.float32), make(rng, (3, 2, 90, 32), np.float32), make(rng, (3, 2, 90, 32), np.float32)
    before = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(1)
        one = sdpa(q, k, v, causal=True)
        attnkit.set_num_threads(3)
        three = sdpa(q, k, v, causal=True)
    finally:
        attnkit.set_num_threads(before)
    assert np.array_equal(one, three)


def guarded(shape, dtype, rng):
    """A C-contiguous array of `shape` whose last element ends exactly where an unreadable page
    begins: a load past the array's end faults (the process dies, and the test with it)."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    pages = (nbytes + page - 1) // page + 1
    buf = mmap.mmap(-1, pages * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(base + (pages - 1) * page, page, 0) != 0:  # PROT_NONE
        pytest.skip("mprotect refused")
    start = (pages - 1) * page - nbytes
    a = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=start).reshape(shape)
    a[...] = rng.standard_normal(shape)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Tq", [1, 3, 10])
def test_partial_vectors_never_read_past_the_arrays(isa, rng, dtype, Tq):
    """Decoder steps read K and V in place; the last key's and value's partial vector (D = 36,
    Dv = 13) are masked loads, which must not touch the page after the array."""
    B, H, Tk, D, Dv = 1, 2, 37, 36, 13
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k, v = guarded((B, H, Tk, D), dtype, rng), guarded((B, H, Tk, Dv), dtype, rng)
    got = attnkit.scaled_dot_product_attention(q, k, v, key_lengths=[Tk])
    assert_close(got, ref_sdpa(q, k, v)[0], dtype, "guarded k, v")
