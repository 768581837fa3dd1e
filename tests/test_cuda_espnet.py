"""The additive ESPnet classes (AttAdd, AttLoc, AttCov, AttCovLoc) on GPU arrays (CuPy, and
PyTorch CUDA tensors where installed) against the same classes on the CPU, which
test_espnet_family.py holds to the float64 reference: multi-step sequences carrying the state,
padded batches with NaN in the padding, unsorted rows, and sizes that straddle the kernels' tiles
(8 frames per energy block, 256 frames per softmax chunk, 128 context columns per block, 32 lanes
over A). Skipped without a GPU, CuPy and a CUDA build of attnkit."""
import numpy as np
import pytest

import attnkit.espnet as ae
from attnkit.espnet import CoverageState
from conftest import assert_close, gpu_marks

cp = pytest.importorskip("cupy")
pytestmark = gpu_marks(cp)

CLASSES = ["AttAdd", "AttLoc", "AttCov", "AttCovLoc"]
# (E, Dz, A, C, filts, lengths)
SHAPES = [
    (1, 1, 1, 1, 0, [1]),
    (7, 5, 33, 3, 4, [9, 1, 8]),            # K = 9 > some lengths; A straddles a warp
    (130, 17, 64, 2, 20, [257, 100, 3]),    # E past one column tile, T past one softmax chunk
    (320, 320, 320, 10, 100, [500, 437]),   # ESPnet's recipe sizes
]


def make(cls_name, E, Dz, A, C, filts, dtype):
    cls = getattr(ae, cls_name)
    if cls_name in ("AttLoc", "AttCovLoc"):
        return cls(E, Dz, A, C, filts, dtype=dtype, seed=5)
    return cls(E, Dz, A, dtype=dtype, seed=5)


def state_of(state, to):
    if state is None:
        return None
    return CoverageState(to(state.total)) if isinstance(state, CoverageState) else to(state)


def host(x):
    return cp.asnumpy(x)


@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"E{s[0]}-A{s[2]}-T{max(s[5])}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_steps_equal_the_cpu(cls_name, shape, dtype):
    E, Dz, A, C, filts, lengths = shape
    rng = np.random.default_rng(sum(lengths) + E)
    m = make(cls_name, E, Dz, A, C, filts, dtype)
    T = max(lengths)
    enc = rng.standard_normal((len(lengths), T, E)).astype(dtype)
    for b, n in enumerate(lengths):
        enc[b, n:] = np.nan
    cpu, gpu = m.prepare(enc, lengths), m.prepare(cp.asarray(enc), lengths)
    rows = rng.permutation(np.repeat(np.arange(len(lengths)), 3))
    cpu_state = gpu_state = None
    for _ in range(3):
        dec_z = rng.standard_normal((rows.size, Dz)).astype(dtype)
        ref = m.step(cpu, dec_z, cpu_state, rows=rows)
        got = m.step(gpu, cp.asarray(dec_z), gpu_state, rows=rows)
        assert isinstance(got.context, cp.ndarray) and got.context.dtype == dtype
        assert_close(host(got.context), ref.context.astype(np.float64), dtype, "context")
        assert_close(host(got.weights), ref.weights.astype(np.float64), dtype, "weights")
        assert np.all(host(got.weights)[ref.weights == 0] == 0), "padded frames must be exactly 0"
        assert np.isfinite(host(got.context)).all()
        ref_state = state_of(ref.state, lambda x: x)
        got_state = state_of(got.state, host)
        if isinstance(ref_state, CoverageState):
            ref_state, got_state = ref_state.total, got_state.total
        assert_close(got_state, ref_state.astype(np.float64), dtype, "state")
        cpu_state, gpu_state = ref.state, got.state


def test_a_step_runs_on_the_current_stream_and_returns_device_arrays():
    rng = np.random.default_rng(3)
    m = ae.AttLoc(16, 8, 24, 4, 5, seed=0)
    enc = rng.standard_normal((2, 40, 16)).astype(np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gpu = m.prepare(cp.asarray(enc), [40, 31])
        out = m.step(gpu, cp.asarray(rng.standard_normal((2, 8)).astype(np.float32)))
        peak = out.peak
    stream.synchronize()
    assert isinstance(peak, cp.ndarray) and peak.dtype == cp.int64
    np.testing.assert_array_equal(host(peak), host(out.weights).argmax(-1))
    assert host(out.weights)[1, 31:].max() == 0


def test_pytorch_cuda_tensors_work_too():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    rng = np.random.default_rng(4)
    m = ae.AttCovLoc(16, 8, 24, 4, 5, seed=0)
    enc = rng.standard_normal((2, 40, 16)).astype(np.float32)
    dec_z = rng.standard_normal((2, 8)).astype(np.float32)
    ref = m.step(m.prepare(enc, [40, 31]), dec_z)
    got = m.step(m.prepare(torch.from_numpy(enc).cuda(), [40, 31]), torch.from_numpy(dec_z).cuda())
    assert isinstance(got.context, torch.Tensor) and got.context.is_cuda
    assert_close(got.context.cpu().numpy(), ref.context.astype(np.float64), np.float32, "context")
    assert_close(got.state.total.cpu().numpy(), ref.state.total.astype(np.float64), np.float32, "coverage")


def test_bad_gpu_arguments_raise_typed_errors():
    m = ae.AttLoc(16, 8, 24, 4, 5, seed=0)
    gpu = m.prepare(cp.zeros((1, 10, 16), cp.float32), [10])
    with pytest.raises(TypeError, match="dec_z must be a GPU array like prepared.enc"):
        m.step(gpu, np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"state must have shape \(1, 10\)"):
        m.step(gpu, None, cp.zeros((1, 9), cp.float32))
    with pytest.raises(TypeError, match="enc must have dtype float32"):
        m.prepare(cp.zeros((1, 10, 16), cp.float64), [10])
