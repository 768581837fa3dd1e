"""The decoder loop on CuPy arrays (attnkit.asr.device) against the CPU searches: greedy and
batched beam search over the GPU attention steps, on toy decoders (the four GPU attention
classes, LSTM and GRU, float32 and float64) and on the bundled recogniser's encoder output;
joint CTC/attention search with LM fusion, the CTC recursion's CUDA kernel against the CPU
kernel, and the model's encoder and CTC layer (attnkit.asr.device_encoder).
test_cuda_glue_decoder.py runs the same loops on a stand-in without a GPU; this runs them on
one. Skipped without a GPU, CuPy and a CUDA build of attnkit."""
import numpy as np
import pytest

from attnkit.asr import Recognizer
from attnkit.asr.search import SearchOptions, batch_beam_search, greedy_search
from conftest import gpu_marks
from test_asr_search import inputs, toy_decoder
from test_cuda_glue_decoder import GPU_ATTENTIONS, gru_decoder

cp = pytest.importorskip("cupy")
pytestmark = gpu_marks(cp)


def assert_same(got, want, dtype):
    """Same tokens; scores and alignments to the dtype's precision (cuBLAS sums in its own order)."""
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_array_equal(got.yseq, want.yseq)
    np.testing.assert_allclose(got.score, want.score, rtol=tol, atol=tol)
    np.testing.assert_allclose(got.weights, want.weights, rtol=tol, atol=tol)


@pytest.mark.parametrize("cls", GPU_ATTENTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_searches_on_the_gpu_equal_the_cpu(cls, dtype):
    lengths = [7, 12, 3, 0, 10]
    enc, _ = inputs(lengths, dtype, seed=4)
    decoder = toy_decoder(cls, dtype, eos_bias=0.5, layers=2)
    with pytest.warns(UserWarning):
        got, want = greedy_search(decoder, cp.asarray(enc), lengths), greedy_search(decoder, enc, lengths)
    for g, w in zip(got, want):
        assert_same(g, w, dtype)
    options = SearchOptions(beam_size=3, nbest=2, penalty=0.2)
    with pytest.warns(UserWarning):
        got = batch_beam_search(decoder, cp.asarray(enc), lengths, options=options)
        want = batch_beam_search(decoder, enc, lengths, options=options)
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert_same(g, w, dtype)


def test_gru_decoder_on_the_gpu():
    lengths = [6, 10]
    enc, _ = inputs(lengths, np.float64, seed=2)
    decoder = gru_decoder()
    for g, w in zip(greedy_search(decoder, cp.asarray(enc), lengths), greedy_search(decoder, enc, lengths)):
        assert_same(g, w, np.float64)


def test_the_bundled_recogniser_decodes_on_the_gpu():
    model = Recognizer().model  # the bundled digit recogniser
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3, 160, model.config.input_size)).astype(np.float32)
    enc, lens = model.encode(feats, np.array([160, 120, 90]))
    options = SearchOptions(beam_size=10)
    for search in (lambda e: greedy_search(model.decoder, e, lens),
                   lambda e: [h[0] for h in batch_beam_search(model.decoder, e, lens, options=options)]):
        for g, w in zip(search(cp.asarray(enc)), search(enc)):
            assert_same(g, w, np.float32)


@pytest.mark.parametrize("T,N,C", [(1, 1, 1), (7, 3, 5), (40, 10, 15), (200, 2, 300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ctc_recursion_on_the_gpu_equals_the_cpu_kernel(T, N, C, dtype):
    from attnkit.asr.ctc_prefix import prefix_scores
    from test_ctc_prefix import recursion_inputs

    rng = np.random.default_rng(T + C)
    args = [a.astype(dtype) if a.dtype.kind == "f" else a for a in recursion_inputs(rng, T, N, C, M=C + 3)]
    args[0][min(1, T - 1), args[1][0, 0]] = np.nan
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for first_label in (True, False):
        for start, end in [(1, T), (max(1, T // 2), T), (1, max(1, T - 1)), (T + 1, T)]:
            want = prefix_scores(*args, first_label, start, end, dtype)
            got = prefix_scores(*(cp.asarray(a) for a in args), first_label, start, end, dtype)
            for g, w in zip(got, want):
                assert isinstance(g, cp.ndarray)
                np.testing.assert_allclose(cp.asnumpy(g), w, rtol=tol, atol=tol)
        # The same bounds held on the device (the CTC window), out-of-range ones clamped to [1, T].
        for asked, (start, end) in [((1, T), (1, T)), ((0, T + 5), (1, T)), ((max(1, T // 2), T), (max(1, T // 2), T))]:
            want = prefix_scores(*args, first_label, start, end, dtype)
            got = prefix_scores(*(cp.asarray(a) for a in args), first_label, 1, T, dtype,
                                window=cp.asarray(np.array(asked, np.int64)))
            for g, w in zip(got, want):
                np.testing.assert_allclose(cp.asnumpy(g), w, rtol=tol, atol=tol)


@pytest.mark.parametrize("ctc_weight, margin", [(0.3, 0), (1.0, 0), (0.4, 2)])  # margin: the CTC window
def test_joint_ctc_attention_search_on_the_gpu_equals_the_cpu(ctc_weight, margin):
    lengths = [8, 13, 0, 5]
    enc, logp = inputs(lengths, np.float64, seed=5)
    decoder = toy_decoder("AttLoc", np.float64, eos_bias=0.5, layers=2)
    options = SearchOptions(beam_size=3, nbest=2, ctc_weight=ctc_weight, ctc_window_margin=margin)
    with pytest.warns(UserWarning):
        got = batch_beam_search(decoder, cp.asarray(enc), lengths, ctc_logp=cp.asarray(logp), options=options)
        want = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, options=options)
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert_same(g, w, np.float64)


@pytest.mark.parametrize("lm_gates", [4, 3])
def test_lm_shallow_fusion_on_the_gpu_equals_the_cpu(lm_gates):
    from test_asr_search import toy_lm

    lengths = [9, 6, 12]
    enc, logp = inputs(lengths, np.float64, seed=6)
    decoder = toy_decoder("AttCov", np.float64, eos_bias=0.5)
    lm = toy_lm(np.float64, gates=lm_gates)
    options = SearchOptions(beam_size=3, nbest=2, lm_weight=0.7, ctc_weight=0.4)
    got = batch_beam_search(decoder, cp.asarray(enc), lengths, ctc_logp=cp.asarray(logp), lm=lm, options=options)
    want = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, lm=lm, options=options)
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert_same(g, w, np.float64)


@pytest.mark.parametrize("case", ["blstmp-subsample", "gru-no-projection", "conv2d-blstm", "vgg-blstmp"])
def test_encode_and_ctc_on_the_gpu_equal_the_cpu(case):
    from test_asr_encoder import padded_batch
    from test_asr_model import TINY
    from test_cuda_glue_encoder import tiny_model

    rng = np.random.default_rng(0)
    model, lengths = tiny_model(rng, case, np.float64, positional_encoding=True)
    lengths = [n + 6 for n in lengths]
    feats = padded_batch(rng, lengths, TINY["input_size"], frames=max(lengths) + 3)
    want, want_lengths = model.encode(feats, lengths)
    got, got_lengths = model.encode(cp.asarray(feats), lengths)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cp.asnumpy(model.ctc_log_probs(got)), model.ctc_log_probs(want), rtol=1e-9, atol=1e-9)


def test_the_recogniser_on_the_gpu_transcribes_the_bundled_samples():
    from attnkit.asr import bundled_samples

    for name in ("soundfile", "soxr", "kaldi_native_fbank"):  # the asr extra's audio packages
        pytest.importorskip(name)
    gpu = Recognizer(device="cuda")
    cpu = Recognizer(gpu.model)
    for path in bundled_samples():
        got, want = gpu.transcribe_file(path), cpu.transcribe_file(path)
        assert got.token_ids == want.token_ids, path.name
        np.testing.assert_allclose(got.weights, want.weights, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_ctc", [False, True])
def test_single_utterance_beam_search_on_the_gpu_equals_the_cpu(use_ctc):
    from attnkit.asr.search import beam_search
    from test_asr_search import toy_lm

    enc, logp = inputs([14], np.float32, seed=9)
    decoder = toy_decoder("AttLoc", np.float32, eos_bias=0.8, layers=2)
    options = SearchOptions(beam_size=3, nbest=3, ctc_weight=0.3 if use_ctc else 0.0, lm_weight=0.5, penalty=0.1)
    ctc = logp[0] if use_ctc else None
    lm = toy_lm(np.float32)
    got = beam_search(decoder, cp.asarray(enc[0]), ctc_logp=None if ctc is None else cp.asarray(ctc), lm=lm,
                      options=options)
    want = beam_search(decoder, enc[0], ctc_logp=ctc, lm=lm, options=options)
    for g, w in zip(got, want):
        assert_same(g, w, np.float32)
