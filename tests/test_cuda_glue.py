"""The GPU path of scaled_dot_product_attention up to the kernel launch, on any machine: a
stand-in array library over NumPy whose DLPack capsules say "CUDA" drives the Python checks,
the stream handling and the binding's checks. With no GPU the launch itself must fail with a
typed error (CudaError: no device or driver; UnsupportedError: built without CUDA), never crash.
"""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from gpu_standin import StandInArray

def _has_gpu():
    return _core.cuda_device_count()[0] > 0


pytestmark = pytest.mark.skipif(_has_gpu(), reason="a real GPU is here: test_cuda_sdpa.py runs the real thing")

sdpa = attnkit.scaled_dot_product_attention
LAUNCH_FAILS = (attnkit.CudaError, attnkit.UnsupportedError)


def arrays(rng, B=2, H=3, Tq=5, Tk=7, D=8, Dv=4, dtype=np.float32):
    return [StandInArray(rng.standard_normal(s).astype(dtype)) for s in ((B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, Dv))]


def test_a_valid_call_reaches_the_launch_and_fails_typed(lib, rng):
    q, k, v = arrays(rng)
    mask = StandInArray(np.ones((5, 7), bool))
    with pytest.raises(LAUNCH_FAILS, match="^scaled_dot_product_attention: "):
        sdpa(q, k, v, key_lengths=[7, 3], mask=mask, causal=True, return_weights=True, stream=5)
    if _core.cuda_built():  # past the binding's checks: every argument was exported once, with stream -1
        assert lib.capsule_streams == [-1] * 7 and lib.running == [(0, 5, 0)]


def test_three_d_inputs_device_lengths_and_float_masks_reach_the_launch(lib, rng):
    q, k, v = arrays(rng, H=1)
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    with pytest.raises(LAUNCH_FAILS):
        sdpa(q, k, v, key_lengths=StandInArray(np.array([7, 3], np.int32)),
             mask=StandInArray(np.zeros(7, np.float64)))


@pytest.mark.parametrize("bad,error,pattern", [
    (lambda q, k, v: (q, k.a, v, {}), TypeError, "k must be a GPU array like q"),
    (lambda q, k, v: (StandInArray(q.a.astype(np.float64)), k, v, {}), TypeError, "float32, float16 or bfloat16"),
    (lambda q, k, v: (q, StandInArray(k.a.astype(np.float16)), v, {}), TypeError, "share one dtype"),
    (lambda q, k, v: (q, k[:, :2], v, {}), ValueError, "must broadcast together"),
    (lambda q, k, v: (q, k[:, :, :, :7], v, {}), ValueError, "k must be"),
    (lambda q, k, v: (q, k, v[:, :, :6], {}), ValueError, "v must be"),
    (lambda q, k, v: (q, k, v, {"key_lengths": [8, 1]}), ValueError, "key_lengths must lie in"),
    (lambda q, k, v: (q, k, v, {"key_lengths": StandInArray(np.ones(3, np.int64))}), ValueError, r"shape \(2,\)"),
    (lambda q, k, v: (q, k, v, {"key_lengths": StandInArray(np.ones(2))}), TypeError, "integers"),
    (lambda q, k, v: (q, k, v, {"mask": np.ones((5, 7), bool)}), TypeError, "mask must be a standin GPU array"),
    (lambda q, k, v: (q, k, v, {"mask": StandInArray(np.ones((6, 7), bool))}), ValueError, "broadcastable"),
    (lambda q, k, v: (q, k, v, {"mask": StandInArray(np.ones((5, 7), np.int32))}), TypeError, "mask must be bool"),
    (lambda q, k, v: (q, k, v, {"scale": -1.0}), ValueError, "scale must be"),
    (lambda q, k, v: (q, k, v, {"stream": "default"}), TypeError, "stream must be"),
    (lambda q, k, v: (q, k, v, {"out": StandInArray(np.empty((2, 3, 5, 5), np.float32))}), ValueError, "out must have shape"),
    (lambda q, k, v: (q, k, v, {"out": StandInArray(np.empty((2, 3, 5, 4), np.float16))}), TypeError, "out must have dtype"),
])
def test_bad_arguments_raise_typed_errors_before_the_launch(lib, rng, bad, error, pattern):
    q, k, v, kw = bad(*arrays(rng))
    with pytest.raises(error, match=pattern):
        sdpa(q, k, v, **kw)


@pytest.mark.skipif(not _core.cuda_built(), reason="the binding's checks run after the CUDA-build check")
@pytest.mark.parametrize("case,pattern", [
    ("out_aliases_q", "out must not share memory with q"),
    ("out_strided", "out must have a contiguous last axis"),
    ("head_dim_300", "at most 256"),
])
def test_the_binding_rechecks_what_the_kernel_relies_on(lib, rng, case, pattern):
    q, k, v = arrays(rng, Tk=5, Dv=8)
    kw = {}
    if case == "out_aliases_q":
        kw["out"] = q
    elif case == "out_strided":
        kw["out"] = StandInArray(np.empty((2, 3, 5, 16), np.float32)[..., ::2])
    else:
        q, k, v = arrays(rng, D=300, Dv=300)
    with pytest.raises((ValueError, attnkit.UnsupportedError), match=pattern):
        sdpa(q, k, v, **kw)


def test_numpy_inputs_refuse_a_stream(rng):
    q = rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="stream is for GPU arrays"):
        sdpa(q, q, q, stream=1)
