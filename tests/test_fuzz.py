"""Fuzzing every public function (reliability, issue 8): random ranks, shapes, strides (negative,
zero, overlapping), dtypes, devices, lengths, masks, scales, states of the wrong kind and empty
arrays. Every case either returns the float64 reference's result (any input layout: bitwise the
result of the same call on contiguous copies) or raises a typed exception (TypeError,
ValueError, attnkit.UnsupportedError, MemoryError) whose message names the argument.

Example counts are bounded and derandomized, so CI runs the same cases every time;
ATTNKIT_FUZZ_EXAMPLES sets the count per target (the sanitizer stage of CI runs fewer).
"""
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
import reference as ref
from attnkit import espnet as ek
from conftest import assert_close
from test_espnet_family import ALL, D, FORWARD, make, run_vs_reference

EXAMPLES = int(os.environ.get("ATTNKIT_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
TYPED = (TypeError, ValueError, attnkit.UnsupportedError, MemoryError)
SDPA = "scaled_dot_product_attention"


def expect_typed(call, ops, names) -> None:
    """call() must raise a typed exception whose message starts with one of ``ops`` (the function's
    name) and names one of ``names`` as a word."""
    ops = (ops,) if isinstance(ops, str) else ops
    try:
        call()
    except TYPED as e:
        msg = str(e)
        op = next((o for o in ops if msg.startswith(o)), None)
        assert op is not None, f"{type(e).__name__} not starting with {ops}: {msg!r}"
        pattern = "|".join(rf"(?<![\w.]){re.escape(n)}(?![\w])" for n in names)
        assert re.search(pattern, msg[len(op):]), f"{type(e).__name__} naming none of {names}: {msg!r}"
    except Exception as e:  # noqa: BLE001 - any other type is the failure being looked for
        raise AssertionError(f"untyped {type(e).__name__} for bad {names}: {e}") from e
    else:
        raise AssertionError(f"bad {names} accepted")


class FakeGpuArray:
    """Stands for a CuPy array: exports __cuda_array_interface__ and nothing NumPy can read."""

    def __init__(self, shape):
        self.shape, self.dtype = tuple(shape), np.dtype(np.float32)
        self.__cuda_array_interface__ = {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


# --------------------------------------------------------------------------------------------------
# arrays of every layout
# --------------------------------------------------------------------------------------------------

INPUT_LAYOUTS = ["contiguous", "fortran", "reversed", "stepped", "last_reversed", "last_stepped", "broadcast",
                 "overlapping", "unaligned"]
# writeable, no element twice, last axis contiguous: what out= takes
OUTPUT_LAYOUTS = ["contiguous", "lead_reversed", "lead_stepped", "unaligned"]


@st.composite
def laid_out(draw, shape, dtype, layouts=INPUT_LAYOUTS):
    """An array of ``shape`` and ``dtype`` with random values in a random memory layout:
    transposed, negative or zero strides, gaps, rows that overlap in memory, or data one byte past
    an item boundary (NumPy's unaligned views). ``reversed`` and
    ``stepped`` act on any axis, their ``lead_`` forms on one before the last."""
    layout = draw(st.sampled_from(layouts))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape, n = tuple(shape), len(shape)
    make_values = lambda s: rng.standard_normal(s).astype(dtype)
    if layout.startswith("lead_"):
        if n < 2:
            return make_values(shape)
        layout, axis = layout[len("lead_"):], draw(st.integers(0, n - 2))
    else:
        axis = draw(st.integers(0, n - 1)) if n else 0
    if layout == "contiguous" or n == 0:
        return make_values(shape)
    if layout == "fortran":
        return np.asfortranarray(make_values(shape))
    if layout == "unaligned":
        values = make_values(shape)
        view = np.frombuffer(bytearray(values.nbytes + 1), values.dtype, offset=1).reshape(shape)
        view[...] = values
        return view
    if layout == "reversed":
        return np.flip(make_values(shape), axis)
    if layout == "stepped":
        big = make_values(shape[:axis] + (2 * shape[axis],) + shape[axis + 1:])
        return big[(slice(None),) * axis + (slice(None, None, 2),)]
    if layout == "last_reversed":
        return make_values(shape)[..., ::-1]
    if layout == "last_stepped":
        return make_values(shape[:-1] + (2 * shape[-1],))[..., ::2]
    if layout == "broadcast":
        small = list(shape)
        small[axis] = 1
        return np.broadcast_to(make_values(tuple(small)), shape)
    # overlapping: every axis but the last steps by fewer elements than a row holds
    item = np.dtype(dtype).itemsize
    steps = [draw(st.integers(0, max(1, shape[-1]))) for _ in range(n - 1)] + [1]
    buffer = make_values((1 + sum((s - 1) * k for s, k in zip(shape, steps)),))
    return np.lib.stride_tricks.as_strided(buffer, shape, [k * item for k in steps], writeable=False)


def contiguous(x):
    return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x


# --------------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# --------------------------------------------------------------------------------------------------

@st.composite
def sdpa_cases(draw):
    """Valid calls: few-rows (Tq <= 9, most counts to 16 on AVX2: groups of W rows with lanes over
    the rows, rows left with lanes over d) and tiled shapes, block edges, every option."""
    three_d = draw(st.booleans())
    B, H = draw(st.integers(1, 3)), 1 if three_d else draw(st.integers(1, 4))
    Tq = draw(st.sampled_from([1, 2, 3, 5, 8, 10, 14, 17, 48, 49, 70]))
    Tk = draw(st.sampled_from([1, 2, 7, 16, 33, 255, 257, 300]))
    D_, Dv = draw(st.sampled_from([1, 3, 8, 16, 17, 33, 64])), draw(st.sampled_from([1, 4, 8, 9, 16, 24, 40]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    lead = (B, Tq) if three_d else (B, H, Tq)
    # k and v shared (PyTorch's broadcasting) over the batch or the heads, or grouped (enable_gqa)
    share = draw(st.sampled_from(["none", "batch"] if three_d else ["none", "batch", "heads", "grouped"]))
    Bk = 1 if share == "batch" else B
    Hk = 1 if share == "heads" else H // 2 if share == "grouped" and H % 2 == 0 else H
    klead = (Bk, Tk) if three_d else (Bk, Hk, Tk)
    q = draw(laid_out(lead + (D_,), dtype))
    k = draw(laid_out(klead + (D_,), dtype))
    v = draw(laid_out(klead + (Dv,), dtype))
    kw = {"causal": draw(st.sampled_from([False, True, "lower_right"])), "return_weights": draw(st.booleans())}
    if share == "grouped":
        kw["enable_gqa"] = True
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B))
        kind = draw(st.sampled_from(["list", "int64", "int32", "uint16", "stepped"]))
        kw["key_lengths"] = (lengths if kind == "list" else np.repeat(np.array(lengths), 2)[::2] if kind == "stepped"
                             else np.array(lengths, dtype=kind))
    if draw(st.booleans()):
        full = (B, Tq, Tk) if three_d else (B, H, Tq, Tk)
        shape = tuple(s if draw(st.booleans()) else 1 for s in full)[draw(st.integers(0, len(full) - 1)):]
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if draw(st.booleans()):
            kw["mask"] = rng.random(shape) < 0.7
        else:
            choices = np.array([0.0, -np.inf, -1.5, 0.7])
            kw["mask"] = choices[rng.integers(0, 4, shape)].astype(draw(st.sampled_from([np.float32, np.float64])))
    if draw(st.booleans()):
        kw["scale"] = draw(st.floats(0.01, 1.5))
    return q, k, v, kw


def sdpa_kv_as_q(q, k, v, kw):
    """k and v with q's leading axes, copied (heads repeated where grouped, broadcasts made real)."""
    if kw.get("enable_gqa"):
        k, v = (np.repeat(x, q.shape[1] // x.shape[1], axis=1) for x in (k, v))
    return tuple(x if x.shape[:-2] == q.shape[:-2] else np.array(np.broadcast_to(x, q.shape[:-2] + x.shape[-2:]))
                 for x in (k, v))


def sdpa_reference(q, k, v, kw):
    k, v = sdpa_kv_as_q(q, k, v, kw)
    return ref.sdpa(q, k, v, key_lengths=kw.get("key_lengths"), mask=kw.get("mask"), causal=kw["causal"],
                    scale=kw.get("scale"))


@FUZZ
@given(case=sdpa_cases(), data=st.data())
def test_sdpa_valid_calls_match_the_reference_in_any_layout(case, data):
    q, k, v, kw = case
    out_ref, w_ref = sdpa_reference(q, k, v, kw)
    got = attnkit.scaled_dot_product_attention(q, k, v, **kw)
    out, w = got if kw["return_weights"] else (got, None)
    assert out.shape == out_ref.shape and out.dtype == q.dtype
    assert_close(out, out_ref, q.dtype, "output")
    if w is not None:
        assert_close(w, w_ref, q.dtype, "weights")

    # The same call on contiguous copies gives the same bits, and so does writing into out=
    # (any writeable layout, or q itself: out may alias an input).
    plain = attnkit.scaled_dot_product_attention(*map(contiguous, (q, k, v)), **kw)
    np.testing.assert_array_equal(plain[0] if w is not None else plain, out)
    alias = q.flags.writeable and q.shape == out.shape and q.strides[-1] == q.itemsize and data.draw(st.booleans())
    dest = q if alias else data.draw(laid_out(out.shape, q.dtype, OUTPUT_LAYOUTS))
    got = attnkit.scaled_dot_product_attention(q, k, v, out=dest, **kw)
    assert (got[0] if w is not None else got) is dest
    np.testing.assert_array_equal(dest, out)


def _sdpa_corruptions(q, k, v):
    """(argument names a message may name, function of the call's (args, kwargs))."""
    B, H, Tq, D_ = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    cases = []
    for i, name in enumerate("qkv"):
        x = (q, k, v)[i]

        def put(value, i=i):
            return lambda a, kw: (a[:i] + (value,) + a[i + 1:], kw)

        every = ("q", "k", "v")
        cases += [
            ((name,), put(x.tolist())), ((name,), put(None)), ((name,), put("array")),
            ((name,), put(FakeGpuArray(x.shape))),
            ((name,), put(np.float32(1.0))), ((name,), put(np.zeros(3, np.float32))),
            (every, put(x[0, 0, 0])),
            (every, put(np.empty(x.shape[:2] + (0,) + x.shape[3:], x.dtype))),
            (every, put(np.empty(x.shape[:-1] + (0,), x.dtype))),
        ]
        # A leading axis that cannot broadcast (one of size 1 would: PyTorch's rules).
        cases += [(every, put(np.zeros(x.shape[:i] + (x.shape[i] + 1,) + x.shape[i + 1:], x.dtype)))
                  for i in (0, 1) if x.shape[i] > 1]
        if name != "v":  # v's last axis is Dv, free; q's and k's must agree
            cases.append((every, put(np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype))))
        for dt in (np.int32, np.int64, np.float16, np.complex64, np.bool_, object, ">f4", np.float32, np.float64):
            if np.dtype(dt) != x.dtype:
                cases.append((every, put(x.astype(dt))))
    cases += [
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [-1] * B})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [Tk + 1] * B})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [1] * (B + 1)})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": np.zeros(0, np.int64)})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": np.ones((B, 1), np.int64)})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [1.0] * B})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [True] * B})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": "1"})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": [2**70] * B})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": np.full(B, 2**64 - 1, np.uint64)})),
        (("key_lengths",), lambda a, kw: (a, {**kw, "key_lengths": {"b": 1}})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": np.ones((Tq, Tk), np.int64)})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": np.ones((Tq + 1, Tk + 1), bool)})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": np.ones((2, B + 1, H, Tq, Tk), bool)})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": np.ones((Tq, Tk), np.complex64)})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": "keep"})),
        (("mask",), lambda a, kw: (a, {**kw, "mask": np.array([None])})),
        (("out",), lambda a, kw: (a, {**kw, "out": [0.0]})),
        (("out",), lambda a, kw: (a, {**kw, "out": np.empty((B, H, Tq, Dv + 1), q.dtype)})),
        (("out",), lambda a, kw: (a, {**kw, "out": np.empty((B, H, Tq), q.dtype)})),
        (("out",), lambda a, kw: (a, {**kw, "out": np.empty((B, H, Tq, Dv), np.float16)})),
        (("out",), lambda a, kw: (a, {**kw, "out": np.empty((B, H, Tq, Dv), np.int32)})),
        (("out",), lambda a, kw: (a, {**kw, "out": np.broadcast_to(np.empty(Dv, q.dtype), (B, H, Tq, Dv))})),
    ]
    if B * H * Tq > 1:  # a writeable out whose rows are all one row
        cases.append((("out",), lambda a, kw: (a, {**kw, "out": np.lib.stride_tricks.as_strided(
            np.empty(Dv, q.dtype), (B, H, Tq, Dv), (0, 0, 0, q.itemsize))})))
    if Dv > 1:
        cases.append((("out",), lambda a, kw: (a, {**kw, "out": np.empty((B, H, Tq, 2 * Dv), q.dtype)[..., ::2]})))
    for scale in (0, 0.0, -1.0, float("nan"), float("inf"), -float("inf"), np.float32("nan"), "1", True, 1j, [1.0]):
        cases.append((("scale",), lambda a, kw, s=scale: (a, {**kw, "scale": s})))
    return cases


@FUZZ
@given(case=sdpa_cases(), pick=st.integers(0, 10**6))
def test_sdpa_bad_arguments_raise_typed_errors_naming_them(case, pick):
    q, k, v, kw = case
    k, v = sdpa_kv_as_q(q, k, v, kw)  # (a corrupted q could otherwise still broadcast with them)
    kw = {key: val for key, val in kw.items() if key != "enable_gqa"}
    if q.ndim == 3:
        q, k, v = q[:, None], k[:, None], v[:, None]
        kw = {key: val for key, val in kw.items() if key != "mask"}
    names, corrupt = (corruptions := _sdpa_corruptions(q, k, v))[pick % len(corruptions)]
    args, kwargs = corrupt((q, k, v), kw)
    if "mask" in kwargs and names == ("q", "k", "v"):
        names += ("mask",)  # a mask that cannot broadcast to the new shapes may be named first
    expect_typed(lambda: attnkit.scaled_dot_product_attention(*args, **kwargs), SDPA, names)


def test_sdpa_requests_larger_than_memory_raise_memory_error():
    """Shapes whose outputs or scratch could not fit in any memory: MemoryError, no crash."""
    tiny = np.zeros((1, 1, 1, 1), np.float32)
    # Views over 4 bytes whose kernels' scratch or outputs would pass the 2^47-byte address space.
    huge_keys = np.broadcast_to(tiny, (1, 1, 2**50, 1))
    for tq in (1, 3):
        with pytest.raises(MemoryError):
            attnkit.scaled_dot_product_attention(np.zeros((1, 1, tq, 1), np.float32), huge_keys, huge_keys)
    with pytest.raises(MemoryError):
        attnkit.scaled_dot_product_attention(tiny, huge_keys, huge_keys, return_weights=True)
    huge_queries = np.broadcast_to(tiny, (2**20, 2**10, 2**16, 1))
    keys = np.broadcast_to(tiny, (2**20, 2**10, 1, 1))
    with pytest.raises(MemoryError):
        attnkit.scaled_dot_product_attention(huge_queries, keys, keys)
    wide = np.broadcast_to(tiny, (1, 1, 3, 2**46))  # last axis stride 0: the binding copies it
    with pytest.raises(MemoryError):
        attnkit.scaled_dot_product_attention(wide, wide, np.zeros((1, 1, 3, 1), np.float32))


# --------------------------------------------------------------------------------------------------
# multi_head_attention
# --------------------------------------------------------------------------------------------------

MHA = "multi_head_attention"


@st.composite
def mha_cases(draw):
    B, Tq, Tk = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    H = draw(st.integers(1, 3))
    E = H * draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from(["torch", "torch_separate", "espnet"]))
    Ek, Ev = (E, E) if layout == "torch" else (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(dtype)
    bias = draw(st.booleans())
    if layout == "espnet":
        params = {}
        for name, d in (("linear_q", E), ("linear_k", Ek), ("linear_v", Ev), ("linear_out", E)):
            params[f"{name}.weight"] = w(E, d)
            if bias:
                params[f"{name}.bias"] = w(E)
        flat = [params[f"{n}.{p}"] if f"{n}.{p}" in params else None
                for n in ("linear_q", "linear_k", "linear_v", "linear_out") for p in ("weight", "bias")]
    else:
        if layout == "torch":
            params = {"in_proj_weight": w(3 * E, E)}
            ws = np.split(params["in_proj_weight"], 3)
        else:
            params = {"q_proj_weight": w(E, E), "k_proj_weight": w(E, Ek), "v_proj_weight": w(E, Ev)}
            ws = [params["q_proj_weight"], params["k_proj_weight"], params["v_proj_weight"]]
        bs = [None] * 3
        if bias:
            params["in_proj_bias"] = w(3 * E)
            bs = np.split(params["in_proj_bias"], 3)
        params["out_proj.weight"] = w(E, E)
        if bias:
            params["out_proj.bias"] = w(E)
        flat = [ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], params["out_proj.weight"], params.get("out_proj.bias")]
    query = draw(laid_out((B, Tq, E), dtype))
    self_attention = layout == "torch" and Tq == Tk and draw(st.booleans())
    key = query if self_attention else draw(laid_out((B, Tk, Ek), dtype))
    value = query if self_attention else draw(laid_out((B, Tk, Ev), dtype))
    kw = {"num_heads": H, "causal": draw(st.sampled_from([False, True, "lower_right"]))}
    if draw(st.booleans()):
        kw["key_lengths"] = np.array(draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B)))
    if draw(st.booleans()):  # up to 3 axes: [B, Tq, Tk] for every head (ESPnet's masks); 4: per head
        shape = draw(st.sampled_from([(Tk,), (Tq, Tk), (B, 1, Tk), (B, Tq, Tk), (1, H, 1, Tk), (B, H, Tq, Tk)]))
        kw["mask"] = rng.random(shape) < 0.7
    return query, key, value, params, flat, kw


@FUZZ
@given(case=mha_cases())
def test_multi_head_valid_calls_match_the_reference(case):
    query, key, value, params, flat, kw = case
    out_ref, w_ref = ref.multi_head(query, key, value, *flat, kw["num_heads"], causal=kw["causal"],
                                    key_lengths=kw.get("key_lengths"), mask=kw.get("mask"))
    out, w = attnkit.multi_head_attention(query, key, value, params, return_weights=True, **kw)
    tol = np.float32 if query.dtype == np.float32 else np.float64
    assert_close(out, out_ref, tol, "output")
    assert_close(w, w_ref, tol, "weights")


@FUZZ
@given(case=mha_cases(), pick=st.integers(0, 10**6))
def test_multi_head_bad_arguments_raise_typed_errors_naming_them(case, pick):
    query, key, value, params, _, kw = case
    E, B = query.shape[2], query.shape[0]
    some = sorted(params)[pick % len(params)]
    weights = sorted(n for n in params if "bias" not in n)  # the required entries
    weight = weights[pick % len(weights)]
    cases = [
        (("query",), lambda: (query.tolist(), key, value, params, kw)),
        (("key",), lambda: (query, key.astype(np.int32), value, params, kw)),
        (("value",), lambda: (query, key, value[0], params, kw)),
        (("key", "value"), lambda: (query, key, np.zeros((B, 0, value.shape[2]), query.dtype), params, kw)),
        (("key", "value"), lambda: (query, key, np.zeros((B + 1,) + value.shape[1:], query.dtype), params, kw)),
        (("query", "key", "value"), lambda: (query, key.astype(np.float16), value, params, kw)),
        (("num_heads",), lambda: (query, key, value, params, {**kw, "num_heads": 0})),
        (("num_heads",), lambda: (query, key, value, params, {**kw, "num_heads": E + 1})),
        (("num_heads",), lambda: (query, key, value, params, {**kw, "num_heads": 1.0})),
        (("num_heads",), lambda: (query, key, value, params, {**kw, "num_heads": True})),
        (("num_heads",), lambda: (query, key, value, params, {**kw, "num_heads": -E})),
        (("params",), lambda: (query, key, value, list(params.items()), kw)),
        (("params",), lambda: (query, key, value, {}, kw)),
        (("params", weight), lambda: (query, key, value, {n: a for n, a in params.items() if n != weight}, kw)),
        ((some,), lambda: (query, key, value, {**params, some: params[some][..., :-1]}, kw)),
        ((some,), lambda: (query, key, value, {**params, some: params[some].astype(np.int64)}, kw)),
        ((some,), lambda: (query, key, value, {**params, some: "weights"}, kw)),
        (("key_lengths",), lambda: (query, key, value, params, {**kw, "key_lengths": [-1] * B})),
        (("scale",), lambda: (query, key, value, params, {**kw, "scale": float("nan")})),
    ]
    names, make_args = cases[pick % len(cases)]
    *args, kwargs = make_args()
    expect_typed(lambda: attnkit.multi_head_attention(*args, **kwargs), (MHA, SDPA), names)


# --------------------------------------------------------------------------------------------------
# attnkit.espnet: the 15 classes
# --------------------------------------------------------------------------------------------------

def step_extras(cls, n, t, dtype, rng):
    return {"AttForwardTA": {"out_prev": rng.standard_normal((n, D["O"])).astype(dtype)},
            "GDCAttLoc": {"trans_token": rng.uniform(size=(n, t)).astype(dtype)}}.get(cls, {})


@FUZZ
@given(cls=st.sampled_from(ALL), dtype=st.sampled_from([np.float64, np.float32]),
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), steps=st.integers(1, 3),
       F=st.integers(0, 6), scaled=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_espnet_valid_steps_match_the_reference(cls, dtype, lengths, steps, F, scaled, seed, data):
    """Any class, padded batch with unsorted lengths and garbage padding (NaN where ESPnet does not
    read it), any rows mapping, several steps carrying state: the reference's numbers."""
    B = len(lengths)
    rows = None
    if data.draw(st.booleans()):
        rows = data.draw(st.lists(st.integers(0, B - 1), max_size=5))
        # the reference runs on enc[rows], whose T must be the longest length among those rows
        rows.insert(data.draw(st.integers(0, len(rows))), int(np.argmax(lengths)))
        rows = np.array(rows)
    ignores = cls in ("NoAtt", "AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadMultiResLoc")
    scaling = data.draw(st.floats(0.2, 3.0)) if scaled and not ignores else None
    garbage = data.draw(st.sampled_from(["finite", "zero"] + ([] if cls in FORWARD else ["nan"])))
    run_vs_reference(cls, dtype=dtype, lengths=lengths, steps=steps, F=F, scaling=scaling, seed=seed, rows=rows,
                     garbage=garbage, tol=1e-9 if dtype == np.float64 else 2e-5)


def _relaid(state, draw):
    """The state with every array in a random (input) layout, same values."""
    if isinstance(state, np.ndarray):
        view = draw(laid_out(state.shape, state.dtype, ["contiguous", "fortran", "reversed", "stepped",
                                                        "last_reversed", "last_stepped", "unaligned"]))
        if view.flags.writeable:
            view[...] = state
            return view
        return state
    if isinstance(state, tuple):
        return type(state)(*(_relaid(s, draw) for s in state))
    return state


@FUZZ
@given(cls=st.sampled_from(ALL), lengths=st.lists(st.integers(1, 8), min_size=1, max_size=3), data=st.data())
def test_espnet_steps_read_any_layout(cls, lengths, data):
    """enc, dec_z, the state and the extra inputs as strided views (negative, gaps, transposed):
    the same bits as contiguous arrays."""
    m, _ = make(cls)
    T = max(lengths)
    enc = data.draw(laid_out((len(lengths), T, D["E"]), np.float64))
    prep, prep_c = m.prepare(enc, np.array(lengths)), m.prepare(np.ascontiguousarray(enc), lengths)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    n = len(lengths)
    extra = step_extras(cls, n, T, np.float64, rng)
    first = m.step(prep_c, None, None, **extra)
    dz = data.draw(laid_out((n, D["Dz"]), np.float64))
    want = m.step(prep_c, np.ascontiguousarray(dz), first.state, **extra)
    got = m.step(prep, dz, _relaid(first.state, data.draw), **{k: _relaid(v, data.draw) for k, v in extra.items()})
    np.testing.assert_array_equal(got.context, want.context)
    np.testing.assert_array_equal(got.weights, want.weights)


def _state_corruptions(cls, st_ok, n, T):
    """Wrong kinds, shapes and dtypes of state for a class whose valid state is st_ok."""
    U = np.full((n, T), 1.0 / T)
    bad = [[U], "state", 3, {"w": U}, (U,), U.astype(np.float32), U[:, :-1] if T > 1 else U[:, :0], U[None],
           ek.CoverageState(U), ek.LocRecState(U, U, U), ek.ForwardTAState(U, U), np.zeros((n, 0)), U.astype(int)]
    if isinstance(st_ok, np.ndarray):
        bad += [st_ok.astype(np.float32), st_ok[..., :-1] if st_ok.shape[-1] > 1 else st_ok[..., :0], st_ok[:0],
                np.concatenate([st_ok, st_ok]), st_ok.tolist()]
    elif isinstance(st_ok, tuple):
        for i, leaf in enumerate(st_ok):
            for worse in (leaf.astype(np.float32), leaf[:0], leaf[..., :0], leaf.tolist(), None):
                bad.append(type(st_ok)(*(worse if j == i else x for j, x in enumerate(st_ok))))
    # the class's own state kind is corrupted leaf by leaf above, not replaced whole
    return [b for b in bad if not (isinstance(st_ok, tuple) and type(b) is type(st_ok) and b[0] is U)]


@FUZZ
@given(cls=st.sampled_from(ALL), lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       pick=st.integers(0, 10**6), seed=st.integers(0, 2**16))
def test_espnet_bad_arguments_raise_typed_errors_naming_them(cls, lengths, pick, seed):
    m, _ = make(cls)
    rng = np.random.default_rng(seed)
    B, T = len(lengths), max(lengths)
    enc = rng.standard_normal((B, T, D["E"]))
    prep = m.prepare(enc, lengths)
    extra = step_extras(cls, B, T, np.float64, rng)
    ok_state = m.step(prep, None, None, **extra).state

    prepare_cases = [
        (("lengths",), lambda: m.prepare(enc, [0] * B)),
        (("lengths",), lambda: m.prepare(enc, [-1] + lengths[1:])),
        (("lengths",), lambda: m.prepare(enc, [T + 1] * B)),
        (("lengths",), lambda: m.prepare(enc, lengths + [1])),
        (("lengths",), lambda: m.prepare(enc, [float(x) for x in lengths])),
        (("lengths",), lambda: m.prepare(enc, None)),
        (("lengths",), lambda: m.prepare(enc, "lengths")),
        (("lengths",), lambda: m.prepare(enc, np.full(B, 2**64 - 1, np.uint64))),
        (("enc",), lambda: m.prepare(enc[0], lengths[:1])),
        (("enc",), lambda: m.prepare(enc.astype(np.float32), lengths)),
        (("enc",), lambda: m.prepare(enc.astype(np.int64), lengths)),
        (("enc",), lambda: m.prepare(enc.tolist(), lengths)),
        (("enc",), lambda: m.prepare(FakeGpuArray(enc.shape), lengths)),
        (("enc",), lambda: m.prepare(np.zeros((0, T, D["E"])), [])),
        (("enc", "lengths"), lambda: m.prepare(np.zeros((B, 0, D["E"])), [0] * B)),
    ]
    if cls != "NoAtt":  # NoAtt takes any E
        prepare_cases.append((("enc",), lambda: m.prepare(enc[..., :-1], lengths)))
    step = lambda prepared=prep, dec_z=None, state=None, **kw: m.step(prepared, dec_z, state, **{**extra, **kw})
    step_cases = [
        (("prepared",), lambda: step(prepared=enc)),
        (("prepared",), lambda: step(prepared=None)),
        (("prepared",), lambda: step(prepared=make(cls, seed=1)[0].prepare(enc, lengths))),
        (("rows",), lambda: step(rows=[B])),
        (("rows",), lambda: step(rows=[-1])),
        (("rows",), lambda: step(rows=[])),
        (("rows",), lambda: step(rows=[[0]])),
        (("rows",), lambda: step(rows=[0.5])),
        (("rows",), lambda: step(rows="0")),
        (("rows",), lambda: step(rows=[2**70])),
    ]
    if cls != "NoAtt":
        step_cases += [
            (("dec_z",), lambda: step(dec_z=np.zeros((B, D["Dz"] + 1)))),
            (("dec_z",), lambda: step(dec_z=np.zeros((B + 1, D["Dz"])))),
            (("dec_z",), lambda: step(dec_z=np.zeros((B, D["Dz"]), np.float32))),
            (("dec_z",), lambda: step(dec_z=np.zeros((B, D["Dz"]), np.int64))),
            (("dec_z",), lambda: step(dec_z=np.zeros(D["Dz"]))),
            (("dec_z",), lambda: step(dec_z=[[0.0] * D["Dz"]] * B)),
            (("dec_z",), lambda: step(dec_z=np.zeros((B, 0)))),
            (("dec_z",), lambda: step(dec_z=FakeGpuArray((B, D["Dz"])))),
        ]
        none_ok = getattr(ek, cls).default_scaling is None  # None: 1/sqrt(A_k)
        for s in (0.0, -1.0, float("nan"), float("inf"), "2", True, 1j) + (() if none_ok else (None,)):
            step_cases.append((("scaling",), lambda s=s: step(scaling=s)))
    if cls not in ("AttDot", "AttAdd", "AttMultiHeadDot", "AttMultiHeadAdd"):  # these ignore the state
        for bad in _state_corruptions(cls, ok_state, B, T):
            step_cases.append((("state", "state.total", "state.weights", "state.h", "state.c", "state.u"),
                               lambda bad=bad: step(state=bad)))
    if cls == "AttForwardTA":
        step_cases += [(("out_prev",), lambda: step(out_prev=np.zeros((B, D["O"] + 1)))),
                       (("out_prev",), lambda: step(out_prev=None))]
    if cls == "GDCAttLoc":
        step_cases += [(("trans_token",), lambda: step(trans_token=np.zeros((B, T + 1)))),
                       (("trans_token",), lambda: step(trans_token="tau"))]
    if cls in ("AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"):
        step_cases += [
            (("last_attended_idx",), lambda: step(rows=[0], last_attended_idx=-1, **_one(extra))),
            (("last_attended_idx",), lambda: step(rows=[0], last_attended_idx=T + 5, **_one(extra))),
            (("last_attended_idx",), lambda: step(rows=[0], last_attended_idx=[0, 1], **_one(extra))),
            (("last_attended_idx",), lambda: step(rows=[0], last_attended_idx="0", **_one(extra))),
            (("backward_window",), lambda: step(rows=[0], last_attended_idx=0, backward_window=-1, **_one(extra))),
            (("forward_window",), lambda: step(rows=[0], last_attended_idx=0, forward_window=1.5, **_one(extra))),
        ]
    cases = prepare_cases + step_cases
    names, call = cases[pick % len(cases)]
    expect_typed(call, (f"{cls}.prepare", f"{cls}.step"), names)


def _one(extra):
    return {k: v[:1] for k, v in extra.items()}


# --------------------------------------------------------------------------------------------------
# factories, compat wrappers and runtime settings
# --------------------------------------------------------------------------------------------------

DIM_NAMES = {"eprojs": ("eprojs",), "dunits": ("dunits",), "aheads": ("aheads",), "adim": ("att_dim", "att_dim_k",
             "att_dim_v"), "awin": ("att_win",), "aconv_chans": ("aconv_chans",), "aconv_filts": ("aconv_filts",)}
ATYPE_USES = {"noatt": (), "dot": ("eprojs", "dunits", "adim"), "add": ("eprojs", "dunits", "adim"),
              "coverage": ("eprojs", "dunits", "adim"),
              "location": ("eprojs", "dunits", "adim", "aconv_chans", "aconv_filts"),
              "location_recurrent": ("eprojs", "dunits", "adim", "aconv_chans", "aconv_filts"),
              "coverage_location": ("eprojs", "dunits", "adim", "aconv_chans", "aconv_filts"),
              "location2d": ("eprojs", "dunits", "adim", "awin", "aconv_chans", "aconv_filts"),
              "multi_head_dot": ("eprojs", "dunits", "aheads", "adim"),
              "multi_head_add": ("eprojs", "dunits", "aheads", "adim"),
              "multi_head_loc": ("eprojs", "dunits", "aheads", "adim", "aconv_chans", "aconv_filts"),
              "multi_head_multi_res_loc": ("eprojs", "dunits", "aheads", "adim", "aconv_chans", "aconv_filts")}
BAD_DIMS = [0, -1, 1.5, "3", None, True, np.float64(2.0), [2]]


@FUZZ
@given(atype=st.sampled_from(sorted(ATYPE_USES)), dims=st.fixed_dictionaries(
    {n: st.integers(1, 4) for n in DIM_NAMES}), bad=st.none() | st.tuples(st.sampled_from(sorted(DIM_NAMES)),
                                                                         st.sampled_from(BAD_DIMS)),
       lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_initial_att_builds_working_wrappers_or_names_the_bad_dimension(atype, dims, bad, lengths, seed):
    dims = dict(dims, aconv_filts=dims["aconv_filts"] - 1)  # aconv_filts may be 0
    if bad is not None and bad[0] in ATYPE_USES[atype] and not (bad[0] == "aconv_filts" and bad[1] == 0):
        dims[bad[0]] = bad[1]
        names = DIM_NAMES[bad[0]]
        expect_typed(lambda: ek.initial_att(atype, **dims, dtype=np.float64), "", names)
        return
    m = ek.initial_att(atype, **dims, dtype=np.float64)
    rng = np.random.default_rng(seed)
    B, T = len(lengths), max(lengths)
    enc = rng.standard_normal((B, T, dims["eprojs"]))
    dz = rng.standard_normal((B, dims["dunits"]))
    c, state = m(enc, lengths, dz, None)
    c2, _ = m(enc, lengths, dz, state)
    assert c.shape == c2.shape and c.shape[0] == B and np.isfinite(c2).all()
    if atype not in ("noatt", "dot", "add", "multi_head_dot", "multi_head_add"):  # these read att_prev
        expect_typed(lambda: m(enc, lengths, dz, "not a state"), "",
                     ("att_prev", "att_prev_list", "att_prev_states", "state"))


@FUZZ
@given(n=st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, 1024, 1025, -1, 2**31, 2**63])) |
       st.sampled_from([1.0, "2", None, True, [2], np.int64(2)]), isa=st.text(max_size=8) | st.sampled_from(
           ["portable", "avx2", "avx512", "wide16", None, 3, b"avx2"]))
def test_runtime_settings_take_valid_values_and_name_bad_ones(n, isa):
    threads, active = attnkit.get_num_threads(), attnkit.get_cpu_isa()
    try:
        valid_n = isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n <= 1024
        if valid_n:
            attnkit.set_num_threads(n)
            assert attnkit.get_num_threads() == n
        else:
            expect_typed(lambda: attnkit.set_num_threads(n), "set_num_threads", ("n",))
        try:
            attnkit.set_cpu_isa(isa)
            assert attnkit.get_cpu_isa() == isa
        except TYPED as e:
            assert str(e).startswith("set_cpu_isa") or "cpu isa" in str(e), str(e)
    finally:
        attnkit.set_num_threads(threads)
        attnkit.set_cpu_isa(active)
