"""Every bad input raises a typed exception that names the argument (and never crashes)."""
import numpy as np
import pytest

import attnkit

sdpa = attnkit.scaled_dot_product_attention


@pytest.fixture
def qkv(rng):
    return (rng.standard_normal((2, 3, 4, 8)).astype(np.float32), rng.standard_normal((2, 3, 6, 8)).astype(np.float32),
            rng.standard_normal((2, 3, 6, 5)).astype(np.float32))


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, r"q must have at least 2 axes \[..., T, D\], got shape \(8,\)"),
        (lambda q, k, v: (q[..., None], k, v), ValueError, r"k must be \[..., Tk, D\] with q's D=1, got shape"),
        (lambda q, k, v: (q, k[:, :2], v), ValueError, "the leading axes of q, k and v must broadcast together"),
        (lambda q, k, v: (q, k[..., :7], v), ValueError, r"k must be \[B, H, Tk, D\]"),
        (lambda q, k, v: (q, k, v[:, :, :5]), ValueError, r"v must be \[B, H, Tk, Dv\] with B, H, Tk as in k"),
        (lambda q, k, v: (q.astype(np.int32), k, v), TypeError, "q must have dtype float32 or float64, got int32"),
        (lambda q, k, v: (q, k.astype(np.float64), v), TypeError, "q, k and v must share one dtype"),
        (lambda q, k, v: (q.astype(np.float16), k, v), TypeError, "q must have dtype float32 or float64, got float16"),
        (lambda q, k, v: (q.tolist(), k, v), TypeError, "q must be a numpy.ndarray of float32 or float64, got list"),
        (lambda q, k, v: (q[:, :, :0], k, v), ValueError, r"q must not have an empty axis, got shape \(2, 3, 0, 8\)"),
        (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), ValueError, "k must not have an empty axis"),
    ],
)
def test_bad_arrays(qkv, change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sdpa(*change(*qkv))


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"key_lengths": [6, -1]}, ValueError, r"key_lengths must lie in \[0, Tk=6\], got min -1"),
        ({"key_lengths": [6, 7]}, ValueError, r"key_lengths must lie in \[0, Tk=6\], got min 6 and max 7"),
        ({"key_lengths": [6]}, ValueError, r"key_lengths must have shape \(2,\) \(one per batch entry\), got \(1,\)"),
        ({"key_lengths": [6.0, 2.0]}, TypeError, "key_lengths must hold integers, got dtype float64"),
        ({"mask": np.ones((5, 6), bool)}, ValueError, r"mask must be broadcastable to \(2, 3, 4, 6\), got shape \(5, 6\)"),
        ({"mask": np.ones((4, 6), np.int64)}, TypeError, "mask must be bool .* got dtype int64"),
        ({"scale": 0.0}, ValueError, "scale must be a finite number > 0, got 0.0"),
        ({"scale": -1}, ValueError, "scale must be a finite number > 0, got -1.0"),
        ({"scale": float("nan")}, ValueError, "scale must be a finite number > 0, got nan"),
        ({"scale": float("inf")}, ValueError, "scale must be a finite number > 0, got inf"),
        ({"scale": "1"}, TypeError, "scale must be a real number, got str"),
        ({"out": np.empty((2, 3, 4, 8), np.float32)}, ValueError, r"out must have shape \(2, 3, 4, 5\), got \(2, 3, 4, 8\)"),
        ({"out": np.empty((2, 3, 4, 5), np.float64)}, TypeError, "out must have dtype float32, got float64"),
        ({"out": np.empty((2, 3, 4, 10), np.float32)[..., ::2]}, ValueError, "out must have a contiguous last axis"),
        ({"out": [0]}, TypeError, "out must be a numpy.ndarray, got list"),
    ],
)
def test_bad_options(qkv, kwargs, exc, pattern):
    with pytest.raises(exc, match="scaled_dot_product_attention: " + pattern):
        sdpa(*qkv, **kwargs)


def test_read_only_out_is_refused(qkv):
    out = np.empty((2, 3, 4, 5), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        sdpa(*qkv, out=out)


def test_read_only_inputs_are_fine(qkv):
    for a in qkv:
        a.flags.writeable = False
    assert sdpa(*qkv).shape == (2, 3, 4, 5)


def test_private_core_rechecks_what_kernels_rely_on(qkv):
    """The C++ front door refuses inconsistent arrays even when the Python checks are bypassed."""
    from attnkit import _core

    q, k, v = qkv
    out = np.empty((2, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="v must be"):
        _core.sdpa(q, k, v[:, :, :3], out, None, None, None, False, 0, 1.0)
    with pytest.raises(ValueError, match="key_lengths must lie in"):
        _core.sdpa(q, k, v, out, None, np.array([9, 1]), None, False, 0, 1.0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        _core.sdpa(q, k, v, out, None, None, None, False, 0, float("nan"))
    with pytest.raises(TypeError, match="share one dtype"):
        _core.sdpa(q, k.astype(np.float64), v, out, None, None, None, False, 0, 1.0)
