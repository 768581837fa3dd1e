import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit._linear import linear
from attnkit.espnet._kernels import fused_additive_step

# Every compiled ISA this CPU can run, plus the 'wide16' test build (AVX-512 tile geometry in
# AVX2 code) where AVX2 exists, so the AVX-512 kernels' logic is tested on any x86-64 machine.
ISAS = list(_core.supported_isas()) + (["wide16"] if "avx2" in _core.supported_isas() else [])
UNSUPPORTED_ISAS = [i for i in _core.compiled_isas() if i not in _core.supported_isas()]

# Tolerances by dtype: |got - ref| <= atol + rtol * |ref|.
TOL = {np.float32: (2e-5, 2e-4), np.float64: (1e-12, 1e-10)}


def assert_close(got, ref, dtype, what=""):
    atol, rtol = TOL[np.dtype(dtype).type]
    got = np.asarray(got, np.float64)
    err = np.abs(got - ref)
    bound = atol + rtol * np.abs(ref)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: max abs err {err.max():.3g}, max rel err {(err / np.maximum(np.abs(ref), 1e-300)).max():.3g}; "
            f"worst at {i}: got {got[i]!r}, ref {ref[i]!r}"
        )


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per ISA, restoring the best one afterwards."""
    before = attnkit.get_cpu_isa()
    attnkit.set_cpu_isa(request.param)
    yield request.param
    attnkit.set_cpu_isa(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def gpu_marks(cp) -> list:
    """The marks of a test module that needs a GPU, CuPy (``cp``) and a CUDA build of attnkit."""
    try:
        devices = cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no driver is the same as no GPU here
        devices = 0
    return [
        pytest.mark.gpu,
        pytest.mark.skipif(not _core.cuda_built(), reason="attnkit built without CUDA"),
        pytest.mark.skipif(devices == 0, reason="no CUDA device"),
    ]


@pytest.fixture
def lib(monkeypatch):
    """The stand-in GPU library of gpu_standin.py, installed for one test."""
    import gpu_standin

    return gpu_standin.install(monkeypatch)


@pytest.fixture
def kernel_on_cpu(lib, monkeypatch):
    """The GPU kernel entry replaced by the CPU kernel on the stand-in's arrays (the capsules are
    the arrays themselves), recording the calls."""
    calls = []

    def fake(P, values, lengths, rows, dec_z, w_dec, att_in, conv_w, proj, loc_bias, gvec, scaling, ctx, w, peak,
             scratch, query, stream):
        assert scratch.a.shape == w.a.shape and scratch.a.dtype == w.a.dtype and isinstance(stream, int)
        assert peak.a.dtype == np.int64 and query.a.shape == (w.a.shape[0], P.a.shape[2])
        calls.append(stream)
        arg = lambda x: None if x is None else x.a  # noqa: E731
        query.a[...] = linear(dec_z.a, w_dec.a)  # the CPU path's query projection
        fused_additive_step(arg(P), arg(values), arg(lengths), arg(rows), query.a, arg(att_in), arg(conv_w),
                            arg(proj), arg(loc_bias), arg(gvec), scaling, arg(ctx), arg(w))
        peak.a[...] = w.a.argmax(axis=-1)

    monkeypatch.setattr(lib, "capsule", lambda x: x)
    monkeypatch.setattr(_core, "additive_step_cuda", fake)
    return calls


@pytest.fixture
def ctc_on_cpu(kernel_on_cpu, monkeypatch):
    """The CTC prefix-score GPU entry replaced by the CPU kernel on the stand-in's arrays (with
    kernel_on_cpu's capsules), recording the calls."""
    calls = []

    def fake(x, label_col, blank_col, r_sum, r_blank, repeat, first_label, start, end, logzero, r, psi, window,
             stream):
        assert isinstance(stream, int) and r.a.dtype == psi.a.dtype == x.a.dtype
        calls.append(stream)
        if window is not None:  # device-held bounds, clamped as the CUDA kernel clamps them
            assert window.a.shape == (2,) and window.a.dtype == np.int64
            start, end = max(int(window.a[0]), 1), min(int(window.a[1]), x.a.shape[0])
        _core.ctc_prefix_scores(x.a, label_col.a, blank_col.a, r_sum.a, r_blank.a, repeat.a, first_label, start, end,
                                logzero, r.a, psi.a)

    monkeypatch.setattr(_core, "ctc_prefix_scores_cuda", fake)
    return calls
