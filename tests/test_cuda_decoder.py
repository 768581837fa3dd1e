"""The decoder loop on CuPy arrays (attnkit.asr.device) against the CPU searches: greedy and
batched beam search over the GPU attention steps, on toy decoders (the four GPU attention
classes, LSTM and GRU, float32 and float64) and on the bundled recogniser's encoder output.
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
