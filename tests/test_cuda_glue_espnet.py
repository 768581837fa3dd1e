"""The GPU path of the additive ESPnet classes (AttAdd, AttLoc, AttCov, AttCovLoc) on any
machine, with the stand-in GPU library of gpu_standin.py:

- prepare computes its cache with the library's own matrix product: checked against the CPU;
- with the kernel entry replaced by one that runs the CPU kernel on the stand-in's arrays, whole
  multi-step sequences through the GPU plumbing must equal the CPU path (every argument reaches
  its place, the states carry over);
- a real launch fails typed with no GPU; bad arguments are typed errors before it.
The CUDA kernel itself is tested against the CPU in test_cuda_espnet.py, on a GPU.
"""
import numpy as np
import pytest

import attnkit
import attnkit.espnet as ae
from attnkit import _core
from attnkit.espnet import CoverageState
from conftest import assert_close
from gpu_standin import StandInArray

pytestmark = pytest.mark.skipif(_core.cuda_device_count()[0] > 0,
                                reason="a real GPU is here: test_cuda_espnet.py runs the real thing")

LAUNCH_FAILS = (attnkit.CudaError, attnkit.UnsupportedError)
E, DZ, A, C, FILTS = 12, 7, 9, 3, 4


def make(cls_name, dtype=np.float32):
    cls = getattr(ae, cls_name)
    if cls_name in ("AttLoc", "AttCovLoc"):
        return cls(E, DZ, A, C, FILTS, dtype=dtype, seed=3)
    return cls(E, DZ, A, dtype=dtype, seed=3)


def batch(rng, dtype=np.float32, lengths=(5, 11, 2)):
    T = max(lengths)
    enc = rng.standard_normal((len(lengths), T, E)).astype(dtype)
    for b, n in enumerate(lengths):
        enc[b, n:] = np.nan  # padded frames must never be read
    return enc, list(lengths)


def on(x):
    return None if x is None else StandInArray(np.ascontiguousarray(x))


def state_on(state):
    return CoverageState(on(state.total)) if isinstance(state, CoverageState) else on(state)


def state_host(state):
    return CoverageState(state.total.a) if isinstance(state, CoverageState) else state.a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepare_makes_the_cache_with_the_library(lib, rng, dtype):
    m = make("AttLoc", dtype)
    enc, lengths = batch(rng, dtype)
    host = m.prepare(enc, lengths)
    dev = m.prepare(on(enc), lengths)
    assert dev.on_device and not host.on_device
    assert isinstance(dev.keys, StandInArray) and isinstance(dev.enc, StandInArray)
    np.testing.assert_array_equal(dev.device_lengths.a, lengths)
    np.testing.assert_array_equal(dev.lengths, lengths)
    for b, n in enumerate(lengths):
        assert_close(dev.keys.a[b, :n], host.keys[b, :n].astype(np.float64), dtype, "keys")


@pytest.mark.parametrize("cls_name", ["AttAdd", "AttLoc", "AttCov", "AttCovLoc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_steps_through_the_gpu_plumbing_equal_the_cpu(kernel_on_cpu, rng, cls_name, dtype):
    m = make(cls_name, dtype)
    enc, lengths = batch(rng, dtype)
    host, dev = m.prepare(enc, lengths), m.prepare(on(enc), lengths)
    rows = np.array([2, 0, 1, 1, 0])  # unsorted, several hypotheses per utterance
    host_state = dev_state = None
    for step in range(3):
        dec_z = rng.standard_normal((rows.size, DZ)).astype(dtype)
        ref = m.step(host, dec_z, host_state, rows=rows, scaling=1.5)
        got = m.step(dev, on(dec_z), dev_state, rows=rows, scaling=1.5)
        assert isinstance(got.context, StandInArray) and isinstance(got.weights, StandInArray)
        # Not bitwise: the stand-in's projections are NumPy products, the CPU path's attnkit's.
        assert_close(got.context.a, ref.context.astype(np.float64), dtype, "context")
        assert_close(got.weights.a, ref.weights.astype(np.float64), dtype, "weights")
        assert np.all(got.weights.a[ref.weights == 0] == 0)  # padded frames exactly 0
        np.testing.assert_array_equal(got.peak.a, ref.peak)
        ref_state = ref.state.total if isinstance(ref.state, CoverageState) else ref.state
        assert_close(state_host(got.state), ref_state.astype(np.float64), dtype, "state")
        host_state, dev_state = ref.state, got.state
    assert len(kernel_on_cpu) == 3


def test_a_host_state_restarts_from_the_device_initial_state(kernel_on_cpu, rng):
    m = make("AttCovLoc")
    enc, lengths = batch(rng)
    dev = m.prepare(on(enc), lengths)
    init = m.initial_state(dev, rows=[1, 2])
    assert isinstance(init, CoverageState) and isinstance(init.total, StandInArray)
    np.testing.assert_array_equal(init.total.a, m.initial_state(m.prepare(enc, lengths), rows=[1, 2]).total)


@pytest.mark.parametrize("cls_name", ["AttAdd", "AttLoc", "AttCov", "AttCovLoc"])
def test_a_real_launch_without_a_gpu_fails_typed(lib, rng, cls_name):
    m = make(cls_name)
    enc, lengths = batch(rng)
    dev = m.prepare(on(enc), lengths)
    with pytest.raises(LAUNCH_FAILS, match="additive attention step"):
        m.step(dev, on(rng.standard_normal((3, DZ)).astype(np.float32)))


def _bad_step(kind, m, dev, rng):
    z = on(rng.standard_normal((3, DZ)).astype(np.float32))
    if kind == "host_dec_z":
        return m.step(dev, z.a)
    if kind == "dec_z_shape":
        return m.step(dev, on(np.zeros((3, DZ + 1), np.float32)))
    if kind == "dec_z_dtype":
        return m.step(dev, on(np.zeros((3, DZ), np.float64)))
    if kind == "host_state":
        return m.step(dev, z, np.full((3, 11), 0.1, np.float32))
    if kind == "state_shape":
        return m.step(dev, z, on(np.zeros((3, 10), np.float32)))
    if kind == "rows":
        return m.step(dev, z[:1], rows=[3])
    if kind == "window":
        return m.step(dev, z[:1], rows=[1], last_attended_idx=2)
    if kind == "scaling":
        return m.step(dev, z, scaling=0.0)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,error,pattern", [
    ("host_dec_z", TypeError, "dec_z must be a GPU array like prepared.enc"),
    ("dec_z_shape", ValueError, r"dec_z must have shape \(3, 7\)"),
    ("dec_z_dtype", TypeError, "dec_z must have dtype float32"),
    ("host_state", TypeError, "state must be a standin GPU array"),
    ("state_shape", ValueError, r"state must have shape \(3, 11\)"),
    ("rows", ValueError, "rows"),
    ("window", attnkit.UnsupportedError, "last_attended_idx"),
    ("scaling", ValueError, "scaling"),
])
def test_bad_step_arguments_raise_typed_errors_before_the_launch(lib, rng, kind, error, pattern):
    m = make("AttLoc")
    enc, lengths = batch(rng)
    dev = m.prepare(on(enc), lengths)
    with pytest.raises(error, match=f"^AttLoc.step: .*{pattern}"):
        _bad_step(kind, m, dev, rng)


def test_coverage_state_must_be_a_coverage_state(lib, rng):
    m = make("AttCov")
    enc, lengths = batch(rng)
    dev = m.prepare(on(enc), lengths)
    with pytest.raises(TypeError, match="CoverageState"):
        m.step(dev, None, on(np.zeros((3, 11), np.float32)))


@pytest.mark.parametrize("kind,error,pattern", [
    ("other_class", attnkit.UnsupportedError, "AttDot runs on the CPU only so far"),
    ("dtype", TypeError, "enc must have dtype float32"),
    ("rank", ValueError, "enc must be 3-D"),
    ("eprojs", ValueError, "E = eprojs = 12"),
    ("max_length", ValueError, r"max\(lengths\) == T"),
    ("zero_length", ValueError, "lengths must be >= 1"),
    ("device_lengths", TypeError, "lengths must be a host sequence"),
])
def test_bad_prepare_arguments(lib, rng, kind, error, pattern):
    enc, lengths = batch(rng)
    m = make("AttLoc")
    if kind == "other_class":
        m, x = ae.AttDot(E, DZ, A, seed=0), on(enc)
    elif kind == "dtype":
        x = on(enc.astype(np.float64))
    elif kind == "rank":
        x = on(enc[0])
    elif kind == "eprojs":
        x = on(enc[:, :, :5])
    elif kind == "max_length":
        x, lengths = on(enc), [5, 10, 2]
    elif kind == "zero_length":
        x, lengths = on(enc), [0, 11, 2]
    else:
        x, lengths = on(enc), on(np.array(lengths))
    with pytest.raises(error, match=pattern):
        m.prepare(x, lengths)


@pytest.mark.skipif(not _core.cuda_built(), reason="the binding's checks run after the CUDA-build check")
@pytest.mark.parametrize("case,error,pattern", [
    ("w_dec_shape", ValueError, r"w_dec must have shape \(9, 7\)"),
    ("half", TypeError, "P must be float32 or float64"),
    ("mixed_dtype", TypeError, "dec_z must have the step's dtype float32"),
    ("rows_dtype", TypeError, "rows must be int64"),
    ("peak_dtype", TypeError, "out_peak must be int64"),
    ("strided_dec_z", ValueError, "dec_z must be C-contiguous"),
    ("out_aliases_dec_z", ValueError, "out_context must not share memory with dec_z"),
    ("no_conv", ValueError, "att_in needs conv_w and conv_proj"),
])
def test_the_binding_rechecks_what_the_kernel_relies_on(lib, rng, case, error, pattern):
    B, T, N = 2, 6, 3
    f32 = lambda *s: StandInArray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    P, values, dec_z, w_dec = f32(B, T, A), f32(B, T, E), f32(N, DZ), f32(A, DZ)
    lengths, rows = StandInArray(np.array([6, 4])), StandInArray(np.array([0, 1, 1]))
    ctx, w, scratch, query = f32(N, E), f32(N, T), f32(N, T), f32(N, A)
    peak = StandInArray(np.zeros(N, np.int64))
    att_in = None
    if case == "w_dec_shape":
        w_dec = f32(A, DZ + 1)
    elif case == "half":
        P = StandInArray(P.a.astype(np.float16))
    elif case == "mixed_dtype":
        dec_z = StandInArray(dec_z.a.astype(np.float64))
    elif case == "rows_dtype":
        rows = StandInArray(rows.a.astype(np.int32))
    elif case == "peak_dtype":
        peak = StandInArray(np.zeros(N, np.int32))
    elif case == "strided_dec_z":
        dec_z = StandInArray(rng.standard_normal((N, 2 * DZ)).astype(np.float32)[:, ::2])
    elif case == "out_aliases_dec_z":
        buffer = rng.standard_normal(N * E).astype(np.float32)  # ctx [N, E] over the memory of dec_z [N, Dz]
        dec_z, ctx = StandInArray(buffer[: N * DZ].reshape(N, DZ)), StandInArray(buffer.reshape(N, E))
    elif case == "no_conv":
        att_in = f32(N, 1, T)
    cap = lib.capsule
    with pytest.raises(error, match=f"^additive attention step: {pattern}"):
        _core.additive_step_cuda(cap(P), cap(values), cap(lengths), cap(rows), cap(dec_z), cap(w_dec),
                                 cap(att_in) if att_in is not None else None, None, None, None, cap(f32(A)), 2.0, cap(ctx),
                                 cap(w), cap(peak), cap(scratch), cap(query), 0)


def test_the_espnet_style_wrappers_refuse_gpu_arrays_with_a_pointer_to_the_gpu_path(lib, rng):
    from attnkit.espnet import compat

    enc, lengths = batch(rng)
    with pytest.raises(TypeError, match=r"enc_hs_pad must be a host array .* attnkit.espnet.AttLoc's prepare"):
        compat.AttLoc(E, DZ, A, C, FILTS)(on(enc), lengths, None, None)
    with pytest.raises(TypeError, match="dec_z must be a host array"):
        compat.AttAdd(E, DZ, A)(enc, lengths, on(np.zeros((3, DZ), np.float32)), None)
