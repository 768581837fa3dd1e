"""Packed Linear weights stored in float16 when that is exact (attnkit._linear.PackedWeight).

A float32 weight whose values are all float16 values (a model stored in float16) keeps its panels
in float16 and the kernel widens them as it loads them. The results must be bit for bit those of
the float32 panels, on every ISA (F16C's conversion on AVX2, integer field arithmetic on the
portable and wide16 builds, which only take half panels when asked: half=True), at any thread
count, in the recurrent layers too.
"""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit._linear import PackedWeight, linear

# Special float16 values: the smallest subnormal, a subnormal, the largest subnormal, the smallest
# normal, -0, the largest finite value, and an ordinary one.
SPECIALS = np.array([2.0**-24, -3 * 2.0**-20, 1023 * 2.0**-24, 2.0**-14, -0.0, 65504.0, -1.5], np.float32)


def half_exact(rng, shape) -> np.ndarray:
    """Float32 weights that are all float16 values, with SPECIALS among them."""
    w = rng.standard_normal(shape).astype(np.float16).astype(np.float32)
    flat = w.reshape(-1)
    flat[: min(flat.size, SPECIALS.size)] = SPECIALS[: flat.size]
    return w


def hardware_half() -> bool:
    return attnkit.get_cpu_isa() in ("avx2", "avx512")


def both(w: np.ndarray) -> tuple[PackedWeight, PackedWeight]:
    half, full = PackedWeight(w, half=True), PackedWeight(w, half=False)
    assert half.half and half.panels.dtype == np.float16
    assert not full.half and full.panels.dtype == np.float32
    return half, full


def test_half_panels_only_when_exact(isa, rng):
    w = half_exact(rng, (20, 7))
    assert PackedWeight(w).half == hardware_half()  # by default only where F16C widens them
    assert "stored as float16" in repr(PackedWeight(w, half=True))
    assert PackedWeight(np.array([[np.inf, -np.inf, 1.0]], np.float32), half=True).half  # exact too
    for bad in (np.float32(1 / 3), np.float32(2.0**-25), np.float32(65520.0), np.float32(np.nan)):
        v = w.copy()
        v[3, 4] = bad
        assert not PackedWeight(v).half, bad
        with pytest.raises(ValueError, match="half=True needs a float32 weight of float16 values"):
            PackedWeight(v, half=True)
    assert not PackedWeight(w.astype(np.float64)).half  # float64 models keep float64 panels
    with pytest.raises(ValueError, match="got float64 values"):
        PackedWeight(w.astype(np.float64), half=True)
    assert not PackedWeight(w, half=False).half
    for packed in both(w):
        unpacked = packed.unpacked()
        assert unpacked.dtype == np.float32 and np.array_equal(unpacked, w)
        assert np.array_equal(np.signbit(unpacked), np.signbit(w))  # -0 stays -0


# N straddles the row tiles (1-6 rows on AVX2, 12 on AVX-512), K the unrolled steps, A the panels
# of 16 outputs.
@pytest.mark.parametrize("N,K,A", [(1, 1, 1), (1, 384, 1024), (2, 3, 15), (5, 17, 16), (6, 33, 17), (7, 8, 100),
                                   (13, 5, 33), (97, 40, 48)])
def test_half_panels_give_the_float32_panels_bits(isa, rng, N, K, A):
    w = half_exact(rng, (A, K))
    x = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(A).astype(np.float32)
    half, full = both(w)
    for bias in (None, b):
        for tanh in (False, True):
            got, want = linear(x, half, bias, tanh=tanh), linear(x, full, bias, tanh=tanh)
            assert np.array_equal(got, want), f"{isa} N={N} K={K} A={A} bias={bias is not None} tanh={tanh}"
    np.testing.assert_allclose(linear(x, half, b), x.astype(np.float64) @ w.T.astype(np.float64) + b,
                               rtol=1e-4, atol=1e-3 * np.sqrt(K))


def test_half_panels_carry_infinities_as_the_float32_ones(isa, rng):
    w = half_exact(rng, (18, 9))
    w[2, 3], w[17, 0] = np.inf, -np.inf
    x = rng.standard_normal((4, 9)).astype(np.float32)
    half, full = both(w)
    np.testing.assert_array_equal(linear(x, half), linear(x, full))  # equal_nan for the NaN rows


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_half_panels_bits_do_not_depend_on_the_thread_count(rng, threads):
    w = half_exact(rng, (300, 64))
    x = rng.standard_normal((200, 64)).astype(np.float32)
    half, full = both(w)
    want = linear(x, full)
    before = attnkit.get_num_threads()
    attnkit.set_num_threads(threads)
    try:
        assert np.array_equal(linear(x, half), want)
    finally:
        attnkit.set_num_threads(before)


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3)])
def test_recurrent_layer_with_half_panels(isa, rng, cell, gates):
    T, B, H = 6, 3, 20
    half, full = both(half_exact(rng, (gates * H, H)))
    gx = rng.standard_normal((T, B, gates * H)).astype(np.float32)
    b = rng.standard_normal(gates * H).astype(np.float32)
    active = np.array([3, 3, 2, 2, 1, 1], np.int64)
    outs = []
    for w in (half, full):
        out = np.zeros((T, B, H), np.float32)
        _core.recurrent_layer(gx, w.panels, b, active, False, cell, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    assert np.abs(outs[0][:, :1]).max() > 0


def test_half_panels_need_float32_inputs(rng):
    half, _ = both(half_exact(rng, (16, 5)))
    x = rng.standard_normal((2, 5))
    with pytest.raises(ValueError, match=r"weight must be .* dtype and shape .*got float16"):
        _core.linear(x, half.panels, None, np.empty((2, 16)), packed=True)
    with pytest.raises(ValueError, match="weight_hh must be"):
        _core.recurrent_layer(np.zeros((2, 1, 16)), PackedWeight(half_exact(rng, (16, 4))).panels, None,
                              np.array([1, 1]), False, "lstm", np.zeros((2, 1, 4)))


def test_float16_model_decodes_as_with_float32_panels():
    """The bundled model is stored in float16: loaded as float32 on an ISA with F16C, its packed
    weights go half, and greedy decoding gives the same tokens and the same score bits as with
    float32 panels."""
    pytest.importorskip("safetensors")
    import gc

    from attnkit.asr import AsrModel, greedy_search
    from attnkit.asr.recognizer import BUNDLED_MODEL

    def packed_weights():
        return [o for o in gc.get_objects() if type(o) is PackedWeight]

    before = {id(o) for o in packed_weights()}
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 120, 80)).astype(np.float32)
    runs = []
    for float16_panels in (True, False):
        model = AsrModel.load(BUNDLED_MODEL, dtype=np.float32)
        enc, lens = model.encode(feats, [120, 97])
        greedy_search(model.decoder, enc[:1], lens[:1])  # the attention packs its weights at its first step
        mine = [o for o in packed_weights() if id(o) not in before]
        before |= {id(o) for o in mine}
        assert mine and all(o.half == hardware_half() for o in mine)
        for o in mine:  # one model's panels all float16, the other's all float32
            o.panels, o.half = np.ascontiguousarray(o.panels, np.float16 if float16_panels else np.float32), float16_panels
        enc, lens = model.encode(feats, [120, 97])
        runs.append((enc, greedy_search(model.decoder, enc, lens)))
    (enc_h, hyps_h), (enc_f, hyps_f) = runs
    assert np.array_equal(enc_h, enc_f)
    for h, f in zip(hyps_h, hyps_f):
        assert np.array_equal(h.yseq, f.yseq) and h.score == f.score
