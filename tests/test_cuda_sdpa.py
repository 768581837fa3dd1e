"""scaled_dot_product_attention on GPU arrays (CuPy, and PyTorch CUDA tensors where installed):
against the float64 reference, against the CPU kernel, on the caller's stream, in a CUDA graph,
with every output element written. Skipped without a GPU, CuPy and a CUDA build of attnkit."""
import numpy as np
import pytest

import attnkit
from conftest import gpu_marks
from reference import sdpa as ref_sdpa

cp = pytest.importorskip("cupy")
pytestmark = gpu_marks(cp)

sdpa = attnkit.scaled_dot_product_attention
# float32 on the GPU: float32 everywhere, with exp2 on scaled scores (a few ulp per term).
TOL32 = (3e-5, 3e-4)


def close(got, ref, tol, what):
    atol, rtol = tol
    got = np.asarray(got, np.float64)
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{what}: max abs err {err.max():.3g} at {np.unravel_index(np.argmax(err), err.shape)}"


def poisoned(shape, dtype):
    return cp.full(shape, cp.nan, dtype=dtype)


# Lengths that straddle the 32-key tiles and 32-row blocks; head dims off the float4 steps and
# at the kernel's 1/2/4/8 column cases.
SHAPES = [  # (B, H, Tq, Tk, D, Dv)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 1, 33, 64, 64),
    (3, 2, 5, 31, 7, 9),
    (2, 2, 33, 32, 63, 65),
    (1, 4, 64, 100, 128, 128),
    (2, 1, 97, 257, 256, 200),
    (1, 2, 130, 70, 80, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_reference_and_cpu(shape):
    B, H, Tq, Tk, D, Dv = shape
    rng = np.random.default_rng(sum(shape))
    q, k = rng.standard_normal((B, H, Tq, D), np.float32), rng.standard_normal((B, H, Tk, D), np.float32)
    v = rng.standard_normal((B, H, Tk, Dv), np.float32)
    lengths = rng.integers(0, Tk + 1, B)
    lengths[0] = Tk
    for kw in ({}, {"key_lengths": lengths}, {"causal": True}, {"causal": True, "key_lengths": lengths},
               {"causal": "lower_right", "key_lengths": lengths}):
        out, w = sdpa(cp.asarray(q), cp.asarray(k), cp.asarray(v), return_weights=True, **kw)
        assert isinstance(out, cp.ndarray) and out.dtype == cp.float32 and out.shape == (B, H, Tq, Dv)
        ref, ref_w = ref_sdpa(q, k, v, **kw)
        close(out.get(), ref, TOL32, f"out {kw}")
        close(w.get(), ref_w, TOL32, f"weights {kw}")
        cpu = sdpa(q, k, v, **kw)
        close(out.get(), cpu.astype(np.float64), TOL32, f"GPU against CPU {kw}")


@pytest.mark.parametrize("mask_shape", [(19,), (6, 19), (2, 1, 1, 19), (2, 3, 6, 19)])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masks_broadcast(mask_shape, kind):
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((2, 3, 6, 8), np.float32), rng.standard_normal((2, 3, 19, 8), np.float32)
    v = rng.standard_normal((2, 3, 19, 5), np.float32)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = rng.standard_normal(mask_shape).astype(np.float32)
        mask[rng.random(mask_shape) < 0.2] = -np.inf
    for kw in ({}, {"key_lengths": [12, 19]}, {"causal": True}):
        out, w = sdpa(*map(cp.asarray, (q, k, v)), mask=cp.asarray(mask), return_weights=True, **kw)
        ref, ref_w = ref_sdpa(q, k, v, mask=mask, **kw)
        close(out.get(), ref, TOL32, f"{kind} {mask_shape} {kw}")
        close(w.get(), ref_w, TOL32, f"{kind} weights {kw}")


@pytest.mark.parametrize("qs,ks,gqa,kw", [
    ((2, 8, 1, 64), (2, 2, 300, 64), True, {}),  # grouped decoder step: query heads as rows
    ((2, 6, 5, 32), (2, 3, 40, 32), True, {"causal": True}),  # grouped through zero strides
    ((3, 4, 7, 16), (3, 1, 9, 16), False, {"key_lengths": [9, 1, 5]}),  # one kv head for all
    ((2, 3, 4, 5, 8), (2, 1, 4, 7, 8), False, {}),  # 5-D: one launch per batch entry
])
def test_broadcast_and_grouped_heads_match_the_cpu(qs, ks, gqa, kw):
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal(qs, np.float32), rng.standard_normal(ks, np.float32)
    v = rng.standard_normal(ks, np.float32)
    out, w = sdpa(cp.asarray(q), cp.asarray(k), cp.asarray(v), enable_gqa=gqa, return_weights=True, **kw)
    cpu, cpu_w = sdpa(q, k, v, enable_gqa=gqa, return_weights=True, **kw)
    assert isinstance(out, cp.ndarray) and out.shape == cpu.shape and w.shape == cpu_w.shape
    close(out.get(), cpu.astype(np.float64), TOL32, "out")
    close(w.get(), cpu_w.astype(np.float64), TOL32, "weights")


def test_three_d_inputs_and_rows_with_no_key_give_zeros():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s, np.float32) for s in ((3, 40, 16), (3, 10, 16), (3, 10, 12)))
    out, w = sdpa(*map(cp.asarray, (q, k, v)), key_lengths=[10, 0, 4], causal="lower_right", return_weights=True)
    ref, ref_w = ref_sdpa(q, k, v, key_lengths=[10, 0, 4], causal="lower_right")
    assert out.shape == (3, 40, 12) and w.shape == (3, 40, 10)
    close(out.get(), ref, TOL32, "3-D out")
    close(w.get(), ref_w, TOL32, "3-D weights")
    assert not cp.isnan(out).any() and float(cp.abs(out[1]).max()) == 0.0 and float(cp.abs(out[:, :30]).max()) == 0.0


def test_non_finite_inputs_give_the_cpu_kernels_pattern():
    """Found by reading the kernel before any GPU run: a row whose every key is masked must give
    zeros even when V rows that other rows of the block see hold inf/NaN, and a row with a NaN
    score must weigh its keys past the causal limit 0 (NaN elsewhere), as the CPU kernel does."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 1, 4, 8), np.float32) for _ in range(3))
    v[0, 0, 2] = np.inf
    v[0, 0, 3] = np.nan
    q[0, 0, 1] = np.nan
    mask = np.ones((4, 4), bool)
    mask[0] = False  # row 0 sees nothing
    for kw in ({"mask": mask}, {"causal": True}):
        host = sdpa(q, k, v, return_weights=True, **kw)
        dev = sdpa(*map(cp.asarray, (q, k, v)), return_weights=True,
                   **{n: cp.asarray(x) if isinstance(x, np.ndarray) else x for n, x in kw.items()})
        for got, want in zip(dev, host):
            np.testing.assert_array_equal(np.isnan(got.get()), np.isnan(want), err_msg=str(kw))
            np.testing.assert_allclose(got.get(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_error_is_at_most_twice_a_naive_computation(dtype):
    """float16 / bfloat16 storage, float32 softmax and accumulation: the error against float64
    is at most twice that of the naive computation in the same precision."""
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("bfloat16 arrays come from PyTorch, which has no CUDA here")
    rng = np.random.default_rng(11)
    B, H, Tq, Tk, D = 2, 4, 77, 300, 64
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)))
    if dtype == "float16":
        args = [cp.asarray(x).astype(cp.float16) for x in (q, k, v)]
        stored = [a.astype(cp.float32).get().astype(np.float64) for a in args]
        out = sdpa(*args).astype(cp.float32).get()
        naive = _naive_half(args, cp)
    else:
        args = [torch.tensor(x, device="cuda", dtype=torch.bfloat16) for x in (q, k, v)]
        stored = [a.float().cpu().numpy().astype(np.float64) for a in args]
        got = sdpa(*args)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 and got.is_cuda
        out = got.float().cpu().numpy()
        naive = _naive_half(args, torch)
    ref, _ = ref_sdpa(*stored)
    err, naive_err = np.abs(out - ref).max(), np.abs(naive - ref).max()
    assert err <= 2 * naive_err, f"{dtype}: error {err:.3g}, naive {naive_err:.3g}"


def _naive_half(args, xp):
    """softmax(q k^T / sqrt(D)) v with every intermediate in the inputs' precision."""
    q, k, v = args
    s = (q @ k.swapaxes(-1, -2) if xp is cp else q @ k.transpose(-1, -2)) * (1.0 / np.sqrt(q.shape[-1]))
    s = s - s.max(axis=-1, keepdims=True) if xp is cp else s - s.amax(dim=-1, keepdim=True)
    e = xp.exp(s)
    p = e / (e.sum(axis=-1, keepdims=True) if xp is cp else e.sum(dim=-1, keepdim=True))
    out = p @ v
    return out.astype(cp.float32).get() if xp is cp else out.float().cpu().numpy()


def test_every_output_element_is_written():
    rng = np.random.default_rng(5)
    q, k, v = (cp.asarray(rng.standard_normal(s, np.float32)) for s in ((2, 2, 45, 24), (2, 2, 70, 24), (2, 2, 70, 40)))
    out = poisoned((2, 2, 45, 40), cp.float32)
    got, w = sdpa(q, k, v, out=out, key_lengths=[70, 33], causal=True, return_weights=True)
    assert got is out and not cp.isnan(out).any() and not cp.isnan(w).any()


def test_runs_on_the_current_stream_and_on_an_explicit_one():
    rng = np.random.default_rng(9)
    host = [rng.standard_normal(s, np.float32) for s in ((4, 4, 64, 64), (4, 4, 512, 64), (4, 4, 512, 64))]
    ref, _ = ref_sdpa(*host)
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        q, k, v = map(cp.asarray, host)
        out = sdpa(q, k, v)  # on `side`, the current stream
    side.synchronize()
    close(out.get(), ref, TOL32, "current stream")
    other = cp.cuda.Stream(non_blocking=True)
    out2 = sdpa(q, k, v, stream=other)  # waits for the null stream's work, runs on `other`
    other.synchronize()
    close(out2.get(), ref, TOL32, "explicit stream")


def test_a_call_is_captured_and_replayed_in_a_cuda_graph():
    rng = np.random.default_rng(13)
    q, k, v = (cp.asarray(rng.standard_normal(s, np.float32)) for s in ((2, 4, 1, 64), (2, 4, 300, 64), (2, 4, 300, 64)))
    lengths = cp.asarray([300, 120], dtype=cp.int64)  # device lengths: nothing to copy from the host
    out = cp.empty((2, 4, 1, 64), cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        sdpa(q, k, v, key_lengths=lengths, out=out)  # warm-up outside the capture
        stream.begin_capture()
        sdpa(q, k, v, key_lengths=lengths, out=out)
        graph = stream.end_capture()
        out.fill(cp.nan)
        q[...] = cp.asarray(rng.standard_normal((2, 4, 1, 64), np.float32))
        graph.launch()
    stream.synchronize()
    ref, _ = ref_sdpa(q.get(), k.get(), v.get(), key_lengths=[300, 120])
    close(out.get(), ref, TOL32, "graph replay")


def test_bad_gpu_arguments_raise_typed_errors():
    q = cp.zeros((1, 2, 3, 8), cp.float32)
    with pytest.raises(TypeError, match="k must be a GPU array like q"):
        sdpa(q, np.zeros((1, 2, 3, 8), np.float32), q)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        sdpa(q.astype(cp.float64), q.astype(cp.float64), q.astype(cp.float64))
    with pytest.raises(TypeError, match="mask must be a cupy GPU array"):
        sdpa(q, q, q, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="key_lengths must lie in"):
        sdpa(q, q, q, key_lengths=[4])
    with pytest.raises(ValueError, match="v must be"):
        sdpa(q, q, cp.zeros((1, 2, 4, 8), cp.float32))
    with pytest.raises(attnkit.UnsupportedError, match="at most 256"):
        big = cp.zeros((1, 1, 2, 300), cp.float32)
        sdpa(big, big, big)
    with pytest.raises(ValueError, match="out must not share memory"):
        sdpa(q, q, q, out=q)
