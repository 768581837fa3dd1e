"""ESPnet's location convolution as an op of its own (attnkit.espnet._kernels.location_conv, the C++
kernel of AttLocRec and of the attention window) against the float64 reference of the spec, on
every ISA; its NumPy twin (the fused step's test reference) against the same."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.espnet._kernels import location_conv, location_conv_reference

from conftest import assert_close
from reference_espnet import location_conv as spec_location_conv

# (N, R, T, C, K): length 1, K wider than T (ESPnet's F = 100 on short inputs), K = 1, R > 1
# (AttLoc2D's window rows), C not a multiple of the 5-channel tile, T straddling the 2-vector
# frame tiles of 8 and 16 lanes, and enough work for the threads (N = 10, T = 200, K = 201).
SHAPES = [(1, 1, 1, 1, 1), (1, 1, 1, 3, 5), (2, 1, 7, 5, 3), (3, 1, 17, 10, 201), (2, 3, 33, 6, 9),
          (1, 1, 16, 11, 1), (4, 2, 9, 7, 21), (1, 1, 40, 5, 81), (10, 1, 200, 10, 201), (3, 1, 31, 4, 31)]


def spec(x, w):
    """The spec's reference in float64, as [N, C, T]."""
    return spec_location_conv(x.astype(np.float64), w.astype(np.float64)[:, None]).transpose(0, 2, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_location_conv_matches_the_spec(isa, rng, dtype, shape):
    n, r, t, c, k = shape
    x = rng.random((n, r, t)).astype(dtype)
    w = rng.standard_normal((c, r, k)).astype(dtype)
    got = location_conv(x, w)
    assert got.dtype == dtype and got.shape == (n, c, t)
    assert_close(got, spec(x, w), dtype, f"location_conv {shape}")
    assert_close(location_conv_reference(x, w), spec(x, w), dtype, f"location_conv_reference {shape}")


def test_location_conv_bits_do_not_depend_on_the_thread_count(rng):
    x = rng.random((10, 1, 200)).astype(np.float32)
    w = rng.standard_normal((10, 1, 201)).astype(np.float32)
    before = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(1)
        one = location_conv(x, w)
        attnkit.set_num_threads(3)
        np.testing.assert_array_equal(location_conv(x, w), one)
    finally:
        attnkit.set_num_threads(before)


def test_location_conv_refuses_bad_arguments():
    x, w = np.zeros((2, 1, 9), np.float32), np.zeros((3, 1, 5), np.float32)
    out = np.zeros((2, 3, 9), np.float32)
    with pytest.raises(ValueError, match="K odd"):
        _core.location_conv(x, np.zeros((3, 1, 4), np.float32), out)
    with pytest.raises(ValueError, match="R = 1"):
        _core.location_conv(x, np.zeros((3, 2, 5), np.float32), out)
    with pytest.raises(ValueError, match="w must be"):
        _core.location_conv(x, w.astype(np.float64), out)
    with pytest.raises(ValueError, match="out must be"):
        _core.location_conv(x, w, np.zeros((2, 9, 3), np.float32))
    with pytest.raises(TypeError, match="x must be"):
        _core.location_conv(x.astype(np.int32), w, out)
    with pytest.raises(ValueError, match="overlap"):
        _core.location_conv(out.reshape(-1)[:18].reshape(2, 1, 9), w, out)
