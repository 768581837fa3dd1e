"""The model's front on the GPU (attnkit.asr.device_encoder) on any machine: ``AsrModel.encode``
and ``ctc_log_probs`` on the stand-in GPU library of gpu_standin.py (NumPy arrays dressed as
CuPy's: a host array in device arithmetic is an error, implicit conversion is refused) against
the CPU model: global MVN, conv2d and VGG2L subsampling, (B)LSTM / GRU layers with and without
projections and frame subsampling, padded batches with unsorted lengths and NaN padding.
test_cuda_decoder.py runs the same on a GPU."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.asr.model import AsrModel
from gpu_standin import StandInArray
from test_asr_encoder import ENCODER_CASES, padded_batch
from test_asr_model import TINY, tiny_weights

pytestmark = pytest.mark.skipif(_core.cuda_device_count()[0] > 0,
                                reason="a real GPU is here: the stand-in would shadow it")


def on(x):
    return StandInArray(np.ascontiguousarray(x))


def tiny_model(rng, case, dtype, positional_encoding=False):
    encoder, conf, lengths = ENCODER_CASES[case]
    conf = dict(conf)
    if conf.get("input_layer") == "conv2d":
        conf["input_layer_positional_encoding"] = positional_encoding
    config = {**TINY, "encoder": encoder, "encoder_conf": conf}
    weights = tiny_weights(rng, config)
    if encoder == "vgg_rnn":
        weights = {k: v * 0.5 if k.startswith("encoder.enc.0.") else v for k, v in weights.items()}
    return AsrModel(config, weights, dtype=dtype), lengths


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode_and_ctc_on_the_device_equal_the_cpu(lib, rng, case, dtype):
    model, lengths = tiny_model(rng, case, dtype, positional_encoding=True)
    lengths = [n + 6 for n in lengths]  # long enough for every front end
    feats = padded_batch(rng, lengths, TINY["input_size"], frames=max(lengths) + 3).astype(dtype)
    want, want_lengths = model.encode(feats, lengths)
    got, got_lengths = model.encode(on(feats), lengths)
    assert isinstance(got, StandInArray) and isinstance(got_lengths, np.ndarray)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got.a, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.ctc_log_probs(got).a, model.ctc_log_probs(want), rtol=tol, atol=tol)
    assert model.on_device(on(feats)) is model.on_device(got)  # weights copied once per device


def test_device_encode_errors_name_the_argument(lib, rng):
    model, _ = tiny_model(rng, "conv2d-blstm", np.float32)
    feats = on(np.zeros((2, 20, TINY["input_size"]), np.float32))
    with pytest.raises(ValueError, match="feats must be a float array of shape"):
        model.encode(on(np.zeros((2, 20, 3), np.float32)), [20, 20])
    with pytest.raises(ValueError, match="lengths must be >= "):
        model.encode(feats, [20, 2])
    with pytest.raises(TypeError, match="lengths must be a host sequence"):
        model.encode(feats, on(np.array([20, 20])))
    with pytest.raises(ValueError, match="enc must have shape"):
        model.ctc_log_probs(on(np.zeros((2, 5, 3), np.float32)))


def test_a_real_launch_without_a_gpu_fails_typed(rng):
    model, _ = tiny_model(rng, "conv2d-blstm", np.float32)
    with pytest.raises((attnkit.CudaError, attnkit.UnsupportedError, TypeError)):
        model.encode(on(np.zeros((1, 20, TINY["input_size"]), np.float32)))


@pytest.mark.parametrize("beam, ctc_weight", [(1, 0.0), (10, 0.3)])
def test_the_recogniser_on_the_device_transcribes_as_the_cpu(lib, kernel_on_cpu, ctc_on_cpu, monkeypatch, beam,
                                                             ctc_weight):
    """Recognizer(device="cuda") end to end on the stand-in: features on the host, then encoder,
    CTC and search on the "device", the CPU recogniser's transcripts."""
    pytest.importorskip("soundfile")
    pytest.importorskip("kaldi_native_fbank")
    from attnkit.asr import Recognizer, bundled_samples, recognizer

    monkeypatch.setattr(recognizer, "gpu_array_module", lambda: lib.xp)
    cpu = Recognizer(beam=beam, ctc_weight=ctc_weight)
    gpu = Recognizer(cpu.model, beam=beam, ctc_weight=ctc_weight, device="cuda")
    for path in bundled_samples()[:3]:
        got, want = gpu.transcribe_file(path), cpu.transcribe_file(path)
        assert got.token_ids == want.token_ids and got.text == want.text
        np.testing.assert_allclose(got.weights, want.weights, rtol=2e-5, atol=2e-5)
        assert got.score == pytest.approx(want.score, rel=1e-5)
    assert len(kernel_on_cpu) > 0 and len(ctc_on_cpu) == (len(kernel_on_cpu) if ctc_weight else 0)


def test_the_decode_benchmark_runs_through_the_device(lib, kernel_on_cpu):
    """attnkit.bench.decode's runner with a GPU array module (benchmarks/bench_decode.py --device
    cuda): the same token ids as the CPU runner for every search."""
    from attnkit.asr import Recognizer
    from attnkit.bench.decode import attnkit_runner

    model = Recognizer().model
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((n, model.config.input_size)).astype(np.float32) for n in (90, 140, 60)]
    for search, beam, batch in (("greedy", 1, 2), ("batch-beam", 4, 3), ("beam", 4, 1)):
        assert attnkit_runner(model, search, beam, batch, lib.xp)(feats) == attnkit_runner(model, search, beam,
                                                                                            batch)(feats), search
