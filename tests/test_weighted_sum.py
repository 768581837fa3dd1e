"""The attention context of given weights as an op of its own (attnkit.espnet._kernels.weighted_sum,
the C++ kernel of the Forward family and NoAtt, on the fused step's context tiles) against a float64
reference of its definition, on every ISA; its NumPy twin against the same."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.espnet._kernels import weighted_sum, weighted_sum_reference

from conftest import assert_close

# (B, T, Ev, rows): one row, a beam of one utterance (more rows than a 5-row tile), rows unsorted
# and repeated, an utterance no row attends, T = 1, Ev straddling 1-3 vectors of 8 and 16 lanes
# and the 2-8 vector column tiles, recipe sizes.
CASES = [
    (1, 1, 1, [0]),
    (1, 7, 9, [0] * 12),
    (3, 13, 17, [2, 0, 0, 1, 2, 2, 0]),
    (4, 5, 33, [3, 1]),
    (2, 9, 16, [1, 1, 1, 0, 1, 1, 1, 1]),
    (5, 31, 15, [4, 3, 2, 1, 0]),
    (2, 40, 64, [0, 1, 0, 1, 0, 1]),
    (1, 200, 320, [0] * 10),
    (10, 200, 320, list(range(10))),
]


def spec(w, values, lengths, rows, valid_only):
    """out[n] = sum over t < L of w[n, t] values[rows[n], t], L = lengths[rows[n]] or T, in float64."""
    w, values = w.astype(np.float64), values.astype(np.float64)
    T = values.shape[1]
    keep = np.arange(T)[None, :] < (lengths[rows][:, None] if valid_only else T)
    return np.einsum("nt,nte->ne", np.where(keep, w, 0.0), np.where(keep[:, :, None], values[rows], 0.0))


def inputs(rng, B, T, Ev, rows, dtype):
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    values = rng.standard_normal((B, T, Ev)).astype(dtype)
    return rng.random((len(rows), T)).astype(dtype), values, lengths.astype(np.int64), np.array(rows, np.int64)


@pytest.mark.parametrize("valid_only", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_weighted_sum_matches_its_definition(isa, rng, dtype, case, valid_only):
    w, values, lengths, rows = inputs(rng, *case[:3], case[3], dtype)
    want = spec(w, values, lengths, rows, valid_only)
    got = weighted_sum(w, values, lengths, rows, valid_only)
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype, f"weighted_sum {case[:3]}")
    assert_close(weighted_sum_reference(w, values, lengths, rows, valid_only), want, dtype, "weighted_sum_reference")


def test_weighted_sum_never_reads_padded_frames(rng):
    """With lengths, NaN in padded frames (values and weights) stays out of the sums; an utterance of
    length 0 gives zeros."""
    w, values, lengths, rows = inputs(rng, 3, 20, 24, [0, 1, 2, 1], np.float32)
    lengths[:] = [20, 7, 0]
    values[1, 7:] = np.nan
    values[2] = np.nan
    w[1, 7:] = np.nan
    got = weighted_sum(w, values, lengths, rows, True)
    assert np.all(np.isfinite(got)) and np.all(got[2] == 0)
    assert_close(got[:2], spec(w[:2], values[:2], lengths[:2], rows[:2], True), np.float32, "padded NaN")


def test_weighted_sum_bits_do_not_depend_on_the_thread_count(rng):
    """The rows of a beam and the columns of a single row are cut across threads."""
    before = attnkit.get_num_threads()
    try:
        for case in [(1, 200, 320, [0] * 10), (1, 300, 320, [0]), (10, 200, 320, list(range(10)))]:
            w, values, lengths, rows = inputs(rng, *case[:3], case[3], np.float32)
            attnkit.set_num_threads(1)
            one = weighted_sum(w, values, lengths, rows, True)
            attnkit.set_num_threads(3)
            np.testing.assert_array_equal(weighted_sum(w, values, lengths, rows, True), one)
    finally:
        attnkit.set_num_threads(before)


def test_weighted_sum_refuses_bad_arguments():
    w, values = np.zeros((2, 9), np.float32), np.zeros((3, 9, 5), np.float32)
    rows, lengths, out = np.zeros(2, np.int64), np.full(3, 9, np.int64), np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, B=3\), got rows\[1\]=3"):
        _core.weighted_sum(w, values, np.array([0, 3]), lengths, out)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, B=3\), got rows\[0\]=-1"):
        _core.weighted_sum(w, values, np.array([-1, 0]), None, out)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=9\], got lengths\[2\]=10"):
        _core.weighted_sum(w, values, rows, np.array([9, 9, 10]), out)
    with pytest.raises(ValueError, match="lengths must be"):
        _core.weighted_sum(w, values, rows, lengths.astype(np.int32), out)
    with pytest.raises(ValueError, match="rows must be a 1-D"):
        _core.weighted_sum(w, values, rows[:, None], lengths, out)
    with pytest.raises(ValueError, match="w must be"):
        _core.weighted_sum(w.astype(np.float64), values, rows, lengths, out)
    with pytest.raises(ValueError, match="w must be"):
        _core.weighted_sum(np.zeros((2, 8), np.float32), values, rows, lengths, out)
    with pytest.raises(ValueError, match="out must be"):
        _core.weighted_sum(w, values, rows, lengths, np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="values must be"):
        _core.weighted_sum(w, values.astype(np.int32), rows, lengths, out)
    with pytest.raises(ValueError, match="overlap"):
        _core.weighted_sum(w, values, rows, lengths, values.reshape(-1)[:10].reshape(2, 5))
    with pytest.raises(ValueError, match="writeable"):
        out.flags.writeable = False
        _core.weighted_sum(w, values, rows, lengths, out)
