"""scaled_dot_product_attention on PyTorch's shape rules: any rank >= 2, leading axes that
broadcast, grouped-query attention (enable_gqa); against the float64 reference on every ISA,
against PyTorch where installed, and on the GPU path through the stand-in library."""
import numpy as np
import pytest

import attnkit
from attnkit import _core, dot_product
from conftest import assert_close
from reference import sdpa as ref_sdpa

sdpa = attnkit.scaled_dot_product_attention

# (q shape, k shape, v shape, enable_gqa): leading axes that broadcast, other ranks, grouped heads.
CASES = [
    ((1, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), False),  # q broadcast over the batch
    ((2, 3, 5, 8), (2, 1, 7, 8), (2, 1, 7, 8), False),  # one kv head shared by all (multi-query)
    ((2, 3, 5, 8), (7, 8), (7, 6), False),  # 2-D k and v for every batch entry and head
    ((5, 8), (2, 3, 7, 8), (2, 3, 7, 8), False),  # 2-D q
    ((5, 8), (7, 8), (7, 6), False),  # all 2-D
    ((3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), False),  # 3-D q against 4-D k, v: q's axis 0 is the head axis
    ((2, 3, 4, 5, 8), (2, 1, 4, 7, 8), (2, 1, 4, 7, 8), False),  # 5-D, broadcast in the middle (a loop)
    ((2, 3, 4, 9, 16), (1, 3, 1, 17, 16), (2, 1, 4, 17, 5), False),  # k and v broadcast differently
    ((2, 6, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), True),  # 3 query heads per kv head
    ((2, 6, 1, 64), (2, 3, 40, 64), (2, 3, 40, 64), True),  # a decoder step, 2 per kv head
    ((2, 6, 5, 8), (2, 2, 7, 8), (2, 3, 7, 8), True),  # k and v grouped differently
    ((2, 6, 5, 8), (2, 2, 7, 8), (2, 6, 7, 8), True),  # only k grouped
    ((2, 6, 5, 8), (2, 2, 7, 8), (1, 1, 7, 8), True),  # v broadcast
    ((6, 5, 8), (2, 7, 8), (2, 7, 8), True),  # 3-D: axis 0 is the head axis
    ((2, 2, 6, 5, 8), (2, 2, 2, 7, 8), (2, 2, 2, 7, 8), True),  # 5-D grouped
    ((2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 8), True),  # enable_gqa with equal heads: plain attention
]


def _expand_gqa(q_shape, x):
    """x with its heads (axis -3) repeated to q's, as PyTorch's enable_gqa reads them."""
    hq, h = q_shape[-3], x.shape[-3] if x.ndim >= 3 else 1
    return np.repeat(x, hq // h, axis=-3) if x.ndim >= 3 and 1 < h < hq else x


def _leading(qs, ks, vs, gqa):
    """The broadcast leading shape of a case (kv heads counted as q's under enable_gqa)."""
    lead = lambda s: s[:-2] if not (gqa and len(s) > 2 and len(qs) > 2) else s[:-3] + (qs[-3],)  # noqa: E731
    return np.broadcast_shapes(qs[:-2], lead(ks), lead(vs))


def _case(rng, qs, ks, vs, dtype=np.float32):
    return tuple(rng.standard_normal(s).astype(dtype) for s in (qs, ks, vs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("qs,ks,vs,gqa", CASES)
def test_shapes_match_reference(isa, rng, qs, ks, vs, gqa, dtype):
    q, k, v = _case(rng, qs, ks, vs, dtype)
    L = _leading(qs, ks, vs, gqa)
    kr, vr = (_expand_gqa(qs, x) if gqa else x for x in (k, v))
    B, Tq, Tk = (L[0] if L else 1), qs[-2], ks[-2]
    lengths = np.arange(B) % Tk + 1 if L else np.array(Tk - 1)
    masks = [None, rng.random((Tq, Tk)) > 0.3, rng.standard_normal(L[-1:] + (1, Tk)).astype(dtype)]
    for i, (kl, mask, causal) in enumerate([(None, None, False), (lengths, None, False), (None, masks[1], True),
                                            (lengths, masks[2], "lower_right"), (None, masks[1], False)]):
        out, w = sdpa(q, k, v, key_lengths=kl, mask=mask, causal=causal, enable_gqa=gqa, return_weights=True)
        ref, ref_w = ref_sdpa(q, kr, vr, key_lengths=None if kl is None else np.reshape(kl, -1), mask=mask,
                              causal=causal)
        assert out.shape == tuple(L) + (Tq, vs[-1]) and w.shape == tuple(L) + (Tq, Tk) and out.dtype == dtype
        assert_close(out, ref, dtype, f"out isa={isa} variant={i}")
        assert_close(w, ref_w, dtype, f"weights isa={isa} variant={i}")


@pytest.mark.parametrize("qs,ks,vs,gqa", CASES)
def test_shapes_match_torch(rng, qs, ks, vs, gqa):
    torch = pytest.importorskip("torch")
    q, k, v = _case(rng, qs, ks, vs)
    for causal in (False, True):
        want = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(x) for x in (q, k, v)), is_causal=causal, enable_gqa=gqa).numpy()
        got = sdpa(q, k, v, causal=causal, enable_gqa=gqa)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def test_out_is_written_in_place(rng):
    q, k, v = _case(rng, (2, 6, 5, 8), (2, 2, 7, 8), (1, 1, 7, 8))
    out = np.full((2, 6, 5, 8), np.nan, np.float32)
    assert sdpa(q, k, v, enable_gqa=True, out=out) is out
    assert_close(out, ref_sdpa(q, _expand_gqa(q.shape, k), v)[0], np.float32, "out=")
    with pytest.raises(ValueError, match=r"out must have shape \(2, 6, 5, 8\), got \(2, 6, 5, 7\)"):
        sdpa(q, k, v, enable_gqa=True, out=np.empty((2, 6, 5, 7), np.float32))


@pytest.fixture
def kernel_calls(monkeypatch):
    """The kernel entry, recording the q, k and mask it is given."""
    calls = []
    real = _core.sdpa

    class Core:
        def __getattr__(self, name):
            return getattr(_core, name)

        @staticmethod
        def sdpa(q, k, v, out, weights, lengths, mask, *rest):
            real(q, k, v, out, weights, lengths, mask, *rest)  # (calls it refuses are not recorded)
            calls.append((q, k, lengths, mask))

    monkeypatch.setattr(dot_product, "_core", Core())
    return calls


def test_shared_and_grouped_kv_are_read_in_place(rng, kernel_calls):
    """Grouped and shared k and v reach the kernel as views, in one call where views allow: the
    query heads of a kv head as its query rows (not with causal masks), else the kv head repeated
    through a zero stride, with the key lengths repeated per kernel batch entry."""
    q, k, v = _case(rng, (8, 8, 1, 64), (8, 2, 100, 64), (8, 2, 100, 64))
    lengths = np.arange(8) + 50
    sdpa(q, k, v, enable_gqa=True, key_lengths=lengths)
    (q4, k4, kl, _), = kernel_calls
    assert q4.shape == (8, 2, 4, 64) and k4.shape == (8, 2, 100, 64) and kl.tolist() == lengths.tolist()
    assert np.shares_memory(k4, k) and np.shares_memory(q4, q)

    kernel_calls.clear()
    sdpa(q, k, v, enable_gqa=True, key_lengths=lengths, causal=True)
    (q4, k4, kl, _), = kernel_calls
    assert q4.shape == (16, 4, 1, 64) and k4.shape == (16, 4, 100, 64) and k4.strides[1] == 0
    assert np.shares_memory(k4, k) and kl.tolist() == np.repeat(lengths, 2).tolist()

    kernel_calls.clear()
    q, k, v = _case(rng, (2, 8, 1, 64), (2, 1, 50, 64), (2, 1, 50, 64))
    sdpa(q, k, v)  # one kv head for all, by broadcasting alone
    (q4, k4, _, _), = kernel_calls
    assert q4.shape == (2, 1, 8, 64) and np.shares_memory(k4, k)

    kernel_calls.clear()
    q, k, v = _case(rng, (2, 3, 4, 5, 8), (2, 1, 4, 7, 8), (2, 1, 4, 7, 8))
    sdpa(q, k, v, mask=np.ones((5, 7), bool))
    assert len(kernel_calls) == 2  # no view merges axis 0 with the broadcast axis 1: one call per batch entry
    assert all(k4.strides[0] == 0 and m4.strides[:2] == (0, 0) for _, k4, _, m4 in kernel_calls)


@pytest.mark.parametrize("mask_shape", [None, (1, 1, 1, 9), (6, 5, 9), (2, 6, 5, 9), (5, 9)])
def test_grouped_calls_give_the_same_bits_in_any_layout(rng, mask_shape):
    """Whether a kv head's query heads run as its query rows depends on shapes only: strided q,
    out and mask give the bits of contiguous ones."""
    q = rng.standard_normal((2, 5, 6, 8)).astype(np.float32).transpose(0, 2, 1, 3)  # [2, 6, 5, 8], strided
    k, v = _case(rng, (2, 2, 9, 8), (2, 2, 9, 4), (1, 1))[:2]
    kw = {"enable_gqa": True}
    if mask_shape is not None:
        kw["mask"] = np.swapaxes(rng.random(mask_shape[:-2] + mask_shape[:-3:-1]) > 0.3, -1, -2)  # strided too
    want = sdpa(np.ascontiguousarray(q), k, v, **{**kw, "mask": np.ascontiguousarray(kw.get("mask"))}
                if mask_shape is not None else kw)
    out = np.empty((2, 5, 6, 4), np.float32).transpose(0, 2, 1, 3)
    got = sdpa(q, k, v, out=out, **kw)
    assert got is out
    np.testing.assert_array_equal(got, want)
    assert_close(got, ref_sdpa(q, _expand_gqa(q.shape, k), _expand_gqa(q.shape, v), mask=kw.get("mask"))[0],
                 np.float32, "grouped")


@pytest.mark.parametrize("args,kwargs,error,pattern", [
    (((2, 3, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8)), {}, ValueError,
     r"the leading axes of q, k and v must broadcast together, got shapes \(2, 3, 5, 8\), \(2, 2, 7, 8\) "
     r"and \(2, 2, 7, 8\) \(enable_gqa=True lets"),
    (((2, 6, 5, 8), (2, 4, 7, 8), (2, 4, 7, 8)), {"enable_gqa": True}, ValueError,
     r"with enable_gqa, k's heads \(axis -3\) must divide q's 6, got 4"),
    (((2, 6, 5, 8), (2, 2, 7, 8), (2, 4, 7, 8)), {"enable_gqa": True}, ValueError,
     "with enable_gqa, v's heads .* got 4"),
    (((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)), {"enable_gqa": True, "mask": np.ones((2, 2, 5, 7), bool)},
     ValueError, r"mask must be broadcastable to \(2, 3, 5, 7\)"),
    (((8,), (7, 8), (7, 8)), {}, ValueError, r"q must have at least 2 axes \[..., T, D\], got shape \(8,\)"),
    (((5, 8), (7, 9), (7, 8)), {}, ValueError, r"k must be \[..., Tk, D\] with q's D=8, got shape \(7, 9\)"),
    (((5, 8), (7, 8), (6, 8)), {}, ValueError, r"v must be \[..., Tk, Dv\] with k's Tk=7, got shape \(6, 8\)"),
    (((2, 1, 5, 8), (2, 3, 0, 8), (2, 3, 0, 8)), {}, ValueError, "k must not have an empty axis"),
    (((2, 1, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)), {"key_lengths": [7, 7, 7]}, ValueError,
     r"key_lengths must have shape \(2,\) \(one per batch entry\), got \(3,\)"),
    (((5, 8), (7, 8), (7, 8)), {"key_lengths": 8}, ValueError, r"key_lengths must lie in \[0, Tk=7\]"),
    (((1, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)), {"mask": np.ones((5, 7), np.int32)}, TypeError, "mask must be bool"),
    (((1, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)), {"scale": -1.0}, ValueError, "scale must be a finite number > 0"),
])
def test_bad_shapes_are_named(rng, args, kwargs, error, pattern):
    with pytest.raises(error, match="scaled_dot_product_attention: " + pattern):
        sdpa(*_case(rng, *args), **kwargs)


def test_dtypes_are_checked_on_the_broadcast_path(rng):
    q, k, v = _case(rng, (1, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8))
    with pytest.raises(TypeError, match="q, k and v must share one dtype"):
        sdpa(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="q must have dtype float32 or float64, got int32"):
        sdpa(q.astype(np.int32), k, v)


# ---- the GPU path, on the stand-in library with the CPU kernel behind the launch ----------------


@pytest.fixture
def sdpa_on_cpu(lib, monkeypatch):
    """sdpa_cuda replaced by the CPU kernel on the stand-in's arrays, recording the calls."""
    calls = []

    def fake(q, k, v, out, weights, lengths, mask, causal, offset, scale, stream):
        assert isinstance(stream, int)
        assert out.a.flags.c_contiguous and (weights is None or weights.a.flags.c_contiguous)
        assert lengths is None or lengths.a.dtype == np.int64
        calls.append(k.a.strides)
        arg = lambda x: None if x is None else x.a  # noqa: E731
        _core.sdpa(q.a, k.a, v.a, out.a, arg(weights), arg(lengths), arg(mask), causal, offset, scale, False)

    monkeypatch.setattr(lib, "capsule", lambda x: x)
    monkeypatch.setattr(_core, "sdpa_cuda", fake)
    monkeypatch.setattr(_core, "cuda_built", lambda: True)
    return calls


@pytest.mark.parametrize("qs,ks,vs,gqa", CASES)
def test_gpu_path_takes_the_same_shapes(rng, sdpa_on_cpu, qs, ks, vs, gqa):
    from gpu_standin import StandInArray

    q, k, v = _case(rng, qs, ks, vs)
    L = _leading(qs, ks, vs, gqa)
    lengths = np.arange(L[0]) % ks[-2] + 1 if L else 3
    mask = rng.random((qs[-2], ks[-2])) > 0.3
    want_out, want_w = sdpa(q, k, v, key_lengths=lengths, mask=mask, causal=True, enable_gqa=gqa, return_weights=True)
    for kl in (lengths, StandInArray(np.asarray(lengths))):
        out, w = sdpa(*map(StandInArray, (q, k, v)), key_lengths=kl, mask=StandInArray(mask), causal=True,
                      enable_gqa=gqa, return_weights=True)
        np.testing.assert_array_equal(out.a, want_out)
        np.testing.assert_array_equal(w.a, want_w)
    assert sdpa_on_cpu
