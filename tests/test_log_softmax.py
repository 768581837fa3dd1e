"""The row-wise log_softmax kernel (attnkit.asr.decoder.log_softmax on NumPy arrays) against a
float64 NumPy reference."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.asr.decoder import log_softmax

from conftest import assert_close


def reference(x):
    x = np.asarray(x, np.float64)
    y = x - x.max(axis=-1, keepdims=True)
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# V straddles the vector widths and the 4-chain unroll; N * V >= 2^15 takes the threads.
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 8), (2, 9), (5, 17), (4, 33), (2, 3, 65), (10, 5000)])
def test_log_softmax_matches_reference(isa, rng, dtype, shape):
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    x.flat[0] = -1e30 if dtype == np.float32 else -1e300  # a term that underflows to 0
    got = log_softmax(x)
    assert got.dtype == dtype and got.shape == shape
    assert_close(got, reference(x), dtype, "log_softmax")


def test_log_softmax_of_non_finite_rows_is_what_numpy_gives():
    x = np.array([[1, np.nan, 2, 0, 0, 0, 0, 0, 0], [-np.inf] * 9, [np.inf, 1, 2, 0, 0, 0, 0, 0, 0],
                  [0, -np.inf, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, np.nan]], np.float32)
    with np.errstate(all="ignore"):
        ref = reference(x)
    got = log_softmax(x)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    assert_close(got[finite], ref[finite], np.float32, "finite entries")


def test_log_softmax_leaves_its_input_and_takes_views(rng):
    x = rng.standard_normal((6, 40)).astype(np.float32)
    before = x.copy()
    got = log_softmax(x[::2, 1:])  # not C-contiguous: copied for the kernel
    assert np.array_equal(x, before)
    assert_close(got, reference(x[::2, 1:]), np.float32, "log_softmax of a view")
    _core.log_softmax(x, x)  # in place is allowed
    assert_close(x, reference(before), np.float32, "in place")


def test_log_softmax_bits_do_not_depend_on_the_thread_count(rng):
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    before = attnkit.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            attnkit.set_num_threads(threads)
            outs.append(log_softmax(x))
    finally:
        attnkit.set_num_threads(before)
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])


def test_log_softmax_kernel_errors_name_the_argument(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    with pytest.raises(TypeError, match=r"x must be a 2-D float32 or float64 array, got int64 \(3, 8\)"):
        _core.log_softmax(x.astype(np.int64), np.empty((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"out must be .* shape \(3, 8\), got float64 \(3, 8\)"):
        _core.log_softmax(x, np.empty((3, 8)))
    with pytest.raises(ValueError, match=r"x must be an aligned, C-contiguous array"):
        _core.log_softmax(x[:, ::2], np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        _core.log_softmax(x[1:], x[:2])
    readonly = np.empty((3, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _core.log_softmax(x, readonly)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        _core.log_softmax(x, [])
