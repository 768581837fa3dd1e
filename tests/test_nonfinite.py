"""Non-finite values follow one documented rule (README, Reliability), on every ISA and path:

- padding (keys past key_lengths, frames past an utterance's length) is never read: whatever it
  holds, NaN included, the result is bitwise the one with zeros there;
- a query whose keys are all masked (key_lengths, a bool mask, causality) gets zeros, output and
  weights, whatever q, k and v hold;
- otherwise NaN lands where the math puts it: NaN in q[b,h,i] or in a key that query i sees
  makes row (b,h,i) NaN; NaN in V[b,h,j,e] makes column e of the rows that see key j NaN (and
  may reach column e of other rows of the same (b,h): 0 x NaN in a matrix product); every other
  row, head and batch entry is bitwise what it is without the NaN. +inf scores are NaN rows,
  -inf scores are masked keys.

Paths: few rows (Tq <= 9, and 10 rows: a group with lanes over the rows and two rows left), few
rows with the keys split across tasks (Tk >= 512, few heads) and tiled.
"""
import numpy as np
import pytest

import attnkit
from attnkit import espnet as ek

sdpa = attnkit.scaled_dot_product_attention

# (B, H, Tq, Tk): tiled with two key blocks, few rows, few rows split over the keys
SHAPES = [(2, 2, 60, 300), (2, 2, 1, 40), (2, 2, 7, 90), (1, 1, 2, 1100), (1, 1, 5, 1100), (2, 1, 10, 500)]
D, DV = 17, 9


def inputs(shape, dtype, seed=0):
    B, H, Tq, Tk = shape
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, H, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, H, Tk, DV)).astype(dtype)
    return q, k, v


def call(q, k, v, **kw):
    return sdpa(q, k, v, return_weights=True, **kw)


CAUSAL = [False, True, "lower_right"]


def causal_offset(shape, causal):
    """Query i sees keys j <= i + offset under ``causal`` (True: PyTorch's is_causal)."""
    return shape[3] - shape[2] if causal == "lower_right" else 0


def sees(shape, lengths, causal):
    """visible[b, i, j]: query i of batch entry b sees key j."""
    B, H, Tq, Tk = shape
    j, i = np.arange(Tk)[None, None, :], np.arange(Tq)[None, :, None]
    visible = j < np.asarray(lengths)[:, None, None]
    return visible & (j <= i + causal_offset(shape, causal)) if causal else np.broadcast_to(visible, (B, Tq, Tk))


def later_key(shape, causal):
    """A key that, under causality, the later half of the queries sees and the earlier does not."""
    return min(causal_offset(shape, causal) + shape[2] // 2, shape[3] - 1) if causal else shape[3] - 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_padding_is_never_read(isa, shape, dtype):
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, dtype)
    lengths = [Tk // 3, Tk - 1][:B] if B > 1 else [Tk - 5]
    clean = call(q, k, v, key_lengths=lengths)
    for poison in (np.nan, np.inf, -np.inf):
        k2, v2 = k.copy(), v.copy()
        for b, n in enumerate(lengths):
            k2[b, :, n:] = poison
            v2[b, :, n:] = poison
        for got, want in zip(call(q, k2, v2, key_lengths=lengths), clean):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_all_masked_queries_get_zeros_whatever_the_inputs_hold(isa, shape, dtype):
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, dtype)
    q[..., 0], k[..., 1, 0], v[..., 2, 0] = np.nan, np.inf, np.nan
    lengths = [0] + [Tk] * (B - 1)
    out, w = call(q, k, v, key_lengths=lengths)  # batch entry 0 sees no key
    assert not out[0].any() and not w[0].any()
    mask = np.ones((Tq, Tk), bool)
    mask[-1] = False  # the last query sees nothing
    out, w = call(q, k, v, mask=mask)
    assert not out[:, :, -1].any() and not w[:, :, -1].any()
    additive = np.zeros((Tq, Tk), dtype)
    additive[0] = -np.inf  # masks finite scores (NaN + -inf stays NaN): only V holds NaN here
    q, k, v = inputs(shape, dtype)
    v[..., 2, 0] = np.nan
    out, w = call(q, k, v, mask=additive)
    assert not out[:, :, 0].any() and not w[:, :, 0].any()
    if Tq > 1:
        # Tq > Tk, last query aligned with the last key: query 0 sees nothing
        out, w = call(q, k[:, :, : Tq - 1], v[:, :, : Tq - 1], causal="lower_right")
        assert not out[:, :, 0].any() and not w[:, :, 0].any()


def split_rows(got, want, bad):
    """got and want are bitwise equal outside the rows in ``bad`` (a bool array over the
    leading axes), which hold NaN in got."""
    np.testing.assert_array_equal(got[~bad], want[~bad])
    return got[bad]


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_nan_in_a_query_makes_its_row_nan(isa, shape, dtype, causal):
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, dtype, seed=1)
    lengths = [Tk] * B
    clean = call(q, k, v, key_lengths=lengths, causal=causal)
    i = Tq - 1
    q[-1, -1, i, D // 2] = np.nan
    out, w = call(q, k, v, key_lengths=lengths, causal=causal)
    bad = np.zeros((B, H, Tq), bool)
    bad[-1, -1, i] = True
    assert np.isnan(split_rows(out, clean[0], bad)).all()
    row = split_rows(w, clean[1], bad)[0]
    visible = sees(shape, lengths, causal)[-1, i]
    assert np.isnan(row[visible]).all() and not row[~visible].any()


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_nan_in_a_key_reaches_exactly_the_rows_that_see_it(isa, shape, dtype, causal):
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, dtype, seed=2)
    lengths = [Tk] * B
    clean = call(q, k, v, key_lengths=lengths, causal=causal)
    j = later_key(shape, causal)
    k[0, 0, j, 3] = np.nan
    out, w = call(q, k, v, key_lengths=lengths, causal=causal)
    bad = np.zeros((B, H, Tq), bool)
    bad[0, 0] = sees(shape, lengths, causal)[0, :, j]
    assert bad.any()
    assert np.isnan(split_rows(out, clean[0], bad)).all()
    assert np.isnan(split_rows(w, clean[1], bad)[:, j]).all()


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_nan_in_a_value_reaches_its_column_in_its_head_only(isa, shape, dtype, causal):
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, dtype, seed=3)
    clean_out, clean_w = call(q, k, v, causal=causal)
    j, e = later_key(shape, causal), 4
    v[0, 0, j, e] = np.nan
    out, w = call(q, k, v, causal=causal)
    np.testing.assert_array_equal(w, clean_w)  # weights never read V
    others = np.ones(out.shape, bool)
    others[0, 0, :, e] = False
    np.testing.assert_array_equal(out[others], clean_out[others])
    column, clean_column = out[0, 0, :, e], clean_out[0, 0, :, e]
    seen = sees(shape, [Tk] * B, causal)[0, :, j]
    assert np.isnan(column[seen]).all()
    unseen = ~seen & ~np.isnan(column)  # unseen rows: NaN (0 x NaN) or their clean value
    np.testing.assert_array_equal(column[unseen], clean_column[unseen])


@pytest.mark.parametrize("shape", SHAPES)
def test_infinite_scores(shape):
    """An additive +inf is a NaN row (inf - inf in the softmax); -inf masks that key."""
    B, H, Tq, Tk = shape
    q, k, v = inputs(shape, np.float64, seed=4)
    mask = np.zeros((Tq, Tk))
    clean = call(q, k, v, mask=mask)
    mask[0, 1] = np.inf
    out, w = call(q, k, v, mask=mask)
    bad = np.zeros((B, H, Tq), bool)
    bad[:, :, 0] = True
    assert np.isnan(split_rows(out, clean[0], bad)).all()
    mask[0, 1] = -np.inf
    keep = np.ones((Tq, Tk), bool)
    keep[0, 1] = False
    out, w = call(q, k, v, mask=mask)
    want = call(q, k, v, mask=keep)
    np.testing.assert_allclose(out, want[0], rtol=1e-13, atol=1e-15)
    assert not w[:, :, 0, 1].any()


@pytest.mark.parametrize("cls", ["AttAdd", "AttLoc", "AttCovLoc", "AttMultiHeadLoc", "AttDot", "AttMultiHeadDot"])
def test_espnet_nan_in_one_rows_decoder_state_stays_in_that_row(cls):
    from test_espnet_family import D as dims, encoder, make

    m, _ = make(cls)
    lengths = [5, 9, 3]
    prep = m.prepare(encoder(np.random.default_rng(5), lengths), lengths)
    rows = np.array([1, 0, 1, 1, 2])
    dz = np.random.default_rng(6).standard_normal((5, dims["Dz"]))
    clean = m.step(prep, dz, None, rows=rows)
    dz[2, 1] = np.nan
    out = m.step(prep, dz, None, rows=rows)
    bad = np.arange(5) == 2
    assert np.isnan(split_rows(out.context, clean.context, bad)).all()
    row = split_rows(out.weights, clean.weights, bad)[0]
    valid = np.arange(9) < lengths[1]
    assert np.isnan(row[..., valid]).all() and not row[..., ~valid].any()


def test_espnet_padding_weights_are_zero_and_contexts_finite_with_inf_padding():
    m = ek.AttLoc(4, 3, 5, 2, 3, dtype=np.float64, seed=0)
    enc = np.random.default_rng(7).standard_normal((2, 6, 4))
    enc[1, 2:] = np.inf
    with np.errstate(invalid="ignore"):  # the cached projection of the padding is NaN
        prepared = m.prepare(enc, [6, 2])
    out = m.step(prepared, np.ones((2, 3)), None)
    assert np.isfinite(out.context).all() and not out.weights[1, 2:].any()
