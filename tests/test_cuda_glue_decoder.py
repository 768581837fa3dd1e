"""The decoder loop on the GPU (attnkit.asr.device) on any machine: the searches run on the
stand-in GPU library of gpu_standin.py, whose arrays behave as CuPy's (a host array in device
arithmetic is an error, implicit conversion is refused, every read back to the host is counted),
with the attention's kernel entry running the CPU kernel (conftest's ``kernel_on_cpu``).

- greedy and batched beam search on the device give the CPU searches' hypotheses: tokens, yseq,
  scores, alignments and peaks, with padded batches, empty utterances, n-best, penalty, min/max
  length ratios, end detection, LSTM and GRU cells, several layers, context_residual;
- the host reads one flag per step, plus the results once at the end;
- joint CTC/attention decoding (the CTC prefix scorer on the device, its recursion's kernel entry
  running the CPU kernel: conftest's ``ctc_on_cpu``), with and without the CTC window, and RNN-LM
  shallow fusion give the CPU search's hypotheses too;
- what the GPU loop does not run yet is a typed error, and a real launch with no GPU fails typed.
The CUDA kernels under it are tested on a GPU by test_cuda_espnet.py.
"""
from dataclasses import replace

import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit.asr.search import SearchOptions, batch_beam_search, beam_search, greedy_search
from gpu_standin import StandInArray
from test_asr_search import EOS, V, inputs, toy_decoder, toy_lm

pytestmark = pytest.mark.skipif(_core.cuda_device_count()[0] > 0,
                                reason="a real GPU is here: the stand-in would shadow it")

GPU_ATTENTIONS = ["AttAdd", "AttLoc", "AttCov", "AttCovLoc"]


def on(x):
    return StandInArray(np.ascontiguousarray(x))


def gru_decoder(dtype=np.float64):
    return toy_decoder("AttLoc", dtype, layers=2, rnn_type="gru", context_residual=True)


def assert_same_hypothesis(got, want, dtype):
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.yseq, want.yseq)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got.score, want.score, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got.weights, want.weights, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(got.peaks, want.peaks)


def reads_during(fn):
    before = StandInArray.host_reads
    result = fn()
    return result, StandInArray.host_reads - before


@pytest.mark.parametrize("cls", GPU_ATTENTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_greedy_on_the_device_equals_the_cpu(kernel_on_cpu, cls, dtype):
    lengths = [5, 11, 0, 2, 9]
    enc, _ = inputs(lengths, dtype)
    decoder = toy_decoder(cls, dtype, eos_bias=1.0, layers=2)
    with pytest.warns(UserWarning, match="utterance"):
        want = greedy_search(decoder, enc, lengths, penalty=0.5, maxlenratio=0.8)
    with pytest.warns(UserWarning, match="utterance") as warned:
        got, reads = reads_during(lambda: greedy_search(decoder, on(enc), lengths, penalty=0.5, maxlenratio=0.8))
    assert warned[0].filename == __file__  # the warning points at the caller's line
    steps = len(kernel_on_cpu)
    assert 1 <= steps <= max(int(0.8 * n) for n in lengths)
    for g, w in zip(got, want):
        assert_same_hypothesis(g, w, dtype)
    assert reads <= steps + 5  # one flag per step, the results once


@pytest.mark.parametrize("cls", GPU_ATTENTIONS)
def test_batched_beam_search_on_the_device_equals_the_cpu(kernel_on_cpu, cls):
    lengths = [7, 12, 3, 0, 10]
    enc, _ = inputs(lengths, np.float64, seed=4)
    decoder = toy_decoder(cls, np.float64, eos_bias=0.5)
    options = SearchOptions(beam_size=3, nbest=3, penalty=0.3, minlenratio=0.1)
    with pytest.warns(UserWarning, match="utterance"):
        want = batch_beam_search(decoder, enc, lengths, options=options)
    with pytest.warns(UserWarning, match="utterance") as warned:
        got, reads = reads_during(lambda: batch_beam_search(decoder, on(enc), lengths, options=options))
    assert warned[0].filename == __file__
    assert reads <= len(kernel_on_cpu) + 10
    for g_list, w_list in zip(got, want):
        assert len(g_list) == len(w_list)
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, np.float64)


@pytest.mark.parametrize("options,normalize", [
    (SearchOptions(beam_size=4, nbest=2), True),                       # end detection
    (SearchOptions(beam_size=2, maxlenratio=0.5), False),               # forced ends at maxlen, raw scores
    (SearchOptions(beam_size=V + 2, nbest=4, penalty=-0.2), True),     # a beam wider than the vocabulary
    (SearchOptions(beam_size=1), True),
])
def test_batched_beam_search_options_on_the_device(kernel_on_cpu, options, normalize):
    lengths = [9, 4, 13]
    enc, _ = inputs(lengths, np.float64, seed=7)
    decoder = toy_decoder("AttLoc", np.float64, eos_bias=1.5, layers=2)
    want = batch_beam_search(decoder, enc, lengths, options=options, normalize_score=normalize)
    got = batch_beam_search(decoder, on(enc), lengths, options=options, normalize_score=normalize)
    for g_list, w_list in zip(got, want):
        assert [h.yseq.tolist() for h in g_list] == [h.yseq.tolist() for h in w_list]
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, np.float64)


def test_gru_layers_and_context_residual_on_the_device(kernel_on_cpu):
    lengths = [6, 10]
    enc, _ = inputs(lengths, np.float64, seed=2)
    decoder = gru_decoder()
    for g, w in zip(greedy_search(decoder, on(enc), lengths), greedy_search(decoder, enc, lengths)):
        assert_same_hypothesis(g, w, np.float64)
    options = SearchOptions(beam_size=3, nbest=2)
    got = batch_beam_search(decoder, on(enc), lengths, options=options)
    for g_list, w_list in zip(got, batch_beam_search(decoder, enc, lengths, options=options)):
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, np.float64)


def test_the_decoder_step_on_the_device_equals_the_cpu_step(kernel_on_cpu):
    lengths = [5, 8]
    enc, _ = inputs(lengths, np.float64)
    decoder = toy_decoder("AttCovLoc", np.float64, layers=2)
    dev = decoder.on_device(on(enc))
    assert decoder.on_device(on(enc)) is dev  # weights copied once per device
    rows = np.array([1, 0, 1])
    host_p, dev_p = decoder.prepare(enc, lengths), dev.prepare(on(enc), lengths)
    host_s, dev_s = decoder.init_state(host_p, rows), dev.init_state(dev_p, rows)
    tokens = np.array([EOS, EOS, EOS])
    for _ in range(3):
        want, host_s, _ = decoder.step(host_p, tokens, host_s, rows)
        got, dev_s, out = dev.step(dev_p, on(tokens), dev_s, rows)
        assert isinstance(got, StandInArray) and isinstance(out.context, StandInArray)
        np.testing.assert_allclose(got.a, want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dev_s.c[1].a, host_s.c[1], rtol=1e-10, atol=1e-10)
        tokens = want.argmax(axis=1)
        index = np.array([2, 0, 0])
        host_s, dev_s = decoder.select(host_s, index), dev.select(dev_s, on(index))


def test_what_the_gpu_loop_does_not_run_is_a_typed_error(kernel_on_cpu):
    lengths = [4, 6]
    enc, logp = inputs(lengths, np.float32)
    decoder = toy_decoder("AttLoc", np.float32)
    with pytest.raises(attnkit.UnsupportedError, match="trans_token .* runs on the CPU only"):
        batch_beam_search(decoder, on(enc), lengths, trans_token=np.full((2, 6), 0.5, np.float32))
    with pytest.raises(TypeError, match="ctc_logp must be a GPU array like enc"):
        batch_beam_search(decoder, on(enc), lengths, ctc_logp=logp, options=SearchOptions(ctc_weight=0.3))
    with pytest.raises(ValueError, match="ctc_logp must be given"):
        batch_beam_search(decoder, on(enc), lengths, options=SearchOptions(ctc_weight=0.3))
    with pytest.raises(ValueError, match=r"ctc_logp must have shape \(2, 6, 7\)"):
        batch_beam_search(decoder, on(enc), lengths, ctc_logp=on(logp[:, :-1]), options=SearchOptions(ctc_weight=0.3))
    lm = toy_lm()

    class DuckLM:  # what the CPU search takes: any object with RNNLM's methods
        predict, buff_predict, final, select = lm.predict, lm.buff_predict, lm.final, lm.select

    with pytest.raises(attnkit.UnsupportedError, match="on the GPU lm must be an attnkit.asr.RNNLM"):
        batch_beam_search(decoder, on(enc), lengths, lm=DuckLM())
    with pytest.raises(attnkit.UnsupportedError, match="needs a float32 decoder"):
        beam_search(toy_decoder("AttLoc", np.float64), on(enc[0].astype(np.float64)),
                    ctc_logp=on(logp[0].astype(np.float64)), options=SearchOptions(ctc_weight=0.3))
    with pytest.raises(ValueError, match=r"enc must be \[T, E\]"):
        beam_search(decoder, on(enc))
    with pytest.raises(attnkit.UnsupportedError, match="AttDot runs on the CPU only"):
        greedy_search(toy_decoder("AttDot", np.float32), on(enc), lengths)
    with pytest.raises(TypeError, match="enc must have the decoder's dtype float32"):
        greedy_search(decoder, on(enc.astype(np.float64)), lengths)
    with pytest.raises(ValueError, match="enc must be"):
        greedy_search(decoder, on(enc[..., :-1]), lengths)
    with pytest.raises(ValueError, match="lengths must lie in"):
        greedy_search(decoder, on(enc), [4, 7])


def test_a_real_launch_without_a_gpu_fails_typed(lib):
    lengths = [4, 6]
    enc, _ = inputs(lengths, np.float32)
    with pytest.raises((attnkit.CudaError, attnkit.UnsupportedError)):
        greedy_search(toy_decoder("AttLoc", np.float32), on(enc), lengths)


def test_the_ctc_binding_checks_the_window_before_the_launch(lib):
    from attnkit.asr.ctc_prefix import prefix_scores
    from test_ctc_prefix import recursion_inputs

    args = [on(a) for a in recursion_inputs(np.random.default_rng(0), 6, 2, 3, M=5)]
    with pytest.raises(ValueError, match="window"):
        prefix_scores(*args, True, 1, 6, np.float64, window=on(np.array([1, 6, 2])))
    for window in (np.array([1, 6]), np.array([1, 6], np.int32)):  # valid (int32 is converted): the launch fails
        with pytest.raises((attnkit.CudaError, attnkit.UnsupportedError)):
            prefix_scores(*args, True, 1, 6, np.float64, window=on(window))


def test_end_detection_stops_the_device_search_at_the_cpu_step(kernel_on_cpu, monkeypatch):
    enc, _ = inputs([40], np.float64, seed=3)
    decoder = toy_decoder("AttLoc", np.float64, eos_bias=1.0)
    options = SearchOptions(beam_size=3, nbest=50)  # every ended hypothesis, so a later stop would show
    cpu_steps = []
    step = decoder.step
    monkeypatch.setattr(decoder, "step", lambda *a, **k: cpu_steps.append(1) or step(*a, **k))
    want = batch_beam_search(decoder, enc, [40], options=options)[0]
    got = batch_beam_search(decoder, on(enc), [40], options=options)[0]
    assert 3 <= len(cpu_steps) < 40  # stopped by end_detect, before maxlen = T
    assert len(kernel_on_cpu) == len(cpu_steps)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same_hypothesis(g, w, np.float64)


def test_the_bundled_recogniser_decodes_through_the_gpu_loop(kernel_on_cpu):
    from attnkit.asr import Recognizer

    model = Recognizer().model
    feats = np.random.default_rng(0).standard_normal((3, 160, model.config.input_size)).astype(np.float32)
    enc, lens = model.encode(feats, np.array([160, 120, 90]))
    options = SearchOptions(beam_size=10)
    for search in (lambda e: greedy_search(model.decoder, e, lens),
                   lambda e: [h[0] for h in batch_beam_search(model.decoder, e, lens, options=options)]):
        for g, w in zip(search(on(enc)), search(enc)):
            assert_same_hypothesis(g, w, np.float32)


@pytest.mark.parametrize("ctc_weight", [0.3, 1.0])  # 1.0: no attention score, every label scored
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_joint_ctc_attention_search_on_the_device_equals_the_cpu(ctc_on_cpu, kernel_on_cpu, ctc_weight, dtype):
    lengths = [8, 13, 0, 5]
    enc, logp = inputs(lengths, dtype, seed=5)
    decoder = toy_decoder("AttLoc", dtype, eos_bias=0.5, layers=2)
    options = SearchOptions(beam_size=3, nbest=2, ctc_weight=ctc_weight, penalty=0.1)
    with pytest.warns(UserWarning, match="utterance"):
        want = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, options=options, normalize_score=False)
    with pytest.warns(UserWarning, match="utterance"):
        got, reads = reads_during(lambda: batch_beam_search(decoder, on(enc), lengths, ctc_logp=on(logp),
                                                            options=options, normalize_score=False))
    assert len(ctc_on_cpu) == len(kernel_on_cpu) >= 2  # the recursion ran on the "device" each step
    assert reads <= len(kernel_on_cpu) + 10            # and read nothing back per step
    for g_list, w_list in zip(got, want):
        assert [h.yseq.tolist() for h in g_list] == [h.yseq.tolist() for h in w_list]
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, dtype)


@pytest.mark.parametrize("lm_gates, ctc_weight", [(4, 0.0), (3, 0.0), (4, 0.4)])
def test_lm_shallow_fusion_on_the_device_equals_the_cpu(ctc_on_cpu, kernel_on_cpu, lm_gates, ctc_weight):
    lengths = [9, 6, 12]
    enc, logp = inputs(lengths, np.float64, seed=6)
    decoder = toy_decoder("AttCov", np.float64, eos_bias=0.5)
    lm = toy_lm(np.float64, gates=lm_gates)
    options = SearchOptions(beam_size=3, nbest=2, lm_weight=0.7, ctc_weight=ctc_weight)
    want = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, lm=lm, options=options)
    got, reads = reads_during(lambda: batch_beam_search(decoder, on(enc), lengths, ctc_logp=on(logp), lm=lm,
                                                        options=options))
    assert lm.on_device(on(enc)) is lm.on_device(on(enc))  # weights copied once per device
    assert reads <= len(kernel_on_cpu) + 10
    assert len(ctc_on_cpu) == (len(kernel_on_cpu) if ctc_weight else 0)
    for g_list, w_list in zip(got, want):
        assert [h.yseq.tolist() for h in g_list] == [h.yseq.tolist() for h in w_list]
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, np.float64)
    no_lm = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, options=replace(options, lm_weight=0.0))
    assert any(g[0].score != w[0].score for g, w in zip(got, no_lm))  # the LM did weigh in


def test_the_ctc_scorer_on_the_device_equals_the_cpu_scorer(ctc_on_cpu):
    from attnkit.asr.ctc_prefix import CTCPrefixScoreBatch

    lengths = [6, 9]
    _, logp = inputs(lengths, np.float64, seed=8)
    W, O = 2, logp.shape[2]
    host, dev = CTCPrefixScoreBatch(logp, lengths, 0, EOS), CTCPrefixScoreBatch(on(logp), lengths, 0, EOS)
    last = np.array([EOS] * 4)
    host_state = dev_state = None
    rng = np.random.default_rng(0)
    for i in range(4):
        ids = np.stack([rng.permutation(np.arange(1, O))[:3] for _ in range(4)])
        want, host_scores = host(last, i, host_state, ids)
        got, dev_scores = dev(on(last), i, dev_state, on(ids))
        assert isinstance(got, StandInArray)
        np.testing.assert_allclose(got.a, want, rtol=1e-12, atol=1e-12)
        best = np.stack([rng.permutation(W * O)[:W] for _ in range(len(lengths))])
        host_state = host.select_state(host_scores, best)
        dev_state = dev.select_state(dev_scores, on(best))
        np.testing.assert_allclose(dev_state.r.a, host_state.r, rtol=1e-12, atol=1e-12)
        last = best.reshape(-1) % O


def test_the_ctc_window_on_the_device_equals_the_cpu_window(ctc_on_cpu):
    from attnkit.asr.ctc_prefix import CTCPrefixScoreBatch
    lengths = [9, 14]
    _, logp = inputs(lengths, np.float64, seed=9)
    W, T, O = 2, logp.shape[1], logp.shape[2]
    host, dev = CTCPrefixScoreBatch(logp, lengths, 0, EOS, margin=2), CTCPrefixScoreBatch(on(logp), lengths, 0, EOS,
                                                                                          margin=2)
    plain = CTCPrefixScoreBatch(logp, lengths, 0, EOS)
    last = np.array([EOS] * 4)
    host_state = dev_state = plain_state = None
    rng = np.random.default_rng(4)
    cut = False
    for i in range(6):
        # Peaked weights moving forward: the window [start, end) moves with them and cuts frames.
        centre = 1.5 * i + rng.uniform(0, 2, size=(4, 1))
        att = np.exp(-(np.arange(T) - centre) ** 2)
        att /= att.sum(axis=1, keepdims=True)
        want, host_scores = host(last, i, host_state, None, att)
        (got, dev_scores), reads = reads_during(lambda: dev(on(last), i, dev_state, None, on(att)))
        assert reads == 0  # the bounds stay on the device
        np.testing.assert_allclose(got.a, want, rtol=1e-12, atol=1e-12)
        assert (int(dev_scores.f_min), int(dev_scores.f_max)) == (host_scores.f_min, host_scores.f_max)
        cut |= not np.allclose(plain(last, i, plain_state, None)[0], want)
        best = np.stack([rng.permutation(W * O)[:W] for _ in range(len(lengths))])
        host_state = host.select_state(host_scores, best)
        dev_state = dev.select_state(dev_scores, on(best))
        plain_state = host_state._replace(f_min=0, f_max=0)
        np.testing.assert_allclose(dev_state.r.a, host_state.r, rtol=1e-12, atol=1e-12)
        last = best.reshape(-1) % O
    assert cut  # the window did leave frames out


@pytest.mark.parametrize("cls", GPU_ATTENTIONS)
def test_joint_ctc_search_with_the_window_on_the_device_equals_the_cpu(ctc_on_cpu, kernel_on_cpu, cls):
    lengths = [8, 13, 5]
    enc, logp = inputs(lengths, np.float64, seed=10)
    decoder = toy_decoder(cls, np.float64, eos_bias=0.5)
    options = SearchOptions(beam_size=3, nbest=2, ctc_weight=0.4, ctc_window_margin=2)
    want = batch_beam_search(decoder, enc, lengths, ctc_logp=logp, options=options)
    got, reads = reads_during(lambda: batch_beam_search(decoder, on(enc), lengths, ctc_logp=on(logp),
                                                        options=options))
    assert len(ctc_on_cpu) == len(kernel_on_cpu) >= 2
    assert reads <= len(kernel_on_cpu) + 10  # no read per step for the window's bounds
    for g_list, w_list in zip(got, want):
        assert [h.yseq.tolist() for h in g_list] == [h.yseq.tolist() for h in w_list]
        for g, w in zip(g_list, w_list):
            assert_same_hypothesis(g, w, np.float64)


SINGLE_OPTIONS = [
    (SearchOptions(beam_size=3, nbest=3, penalty=0.2), False, False),
    (SearchOptions(beam_size=4, nbest=2, maxlenratio=0.5), False, False),      # forced ends at maxlen
    (SearchOptions(beam_size=3, minlenratio=0.9, maxlenratio=1.0), False, False),  # re-runs with lower minlen
    (SearchOptions(beam_size=V + 3, nbest=4), False, False),                    # a beam wider than the vocabulary
    (SearchOptions(beam_size=3, nbest=2, ctc_weight=0.4), True, False),
    (SearchOptions(beam_size=2, ctc_weight=1.0), True, False),                 # every label CTC-scored
    (SearchOptions(beam_size=3, nbest=2, lm_weight=0.6), False, True),
    (SearchOptions(beam_size=3, nbest=3, ctc_weight=0.3, lm_weight=0.5, penalty=0.1), True, True),
]


@pytest.mark.parametrize("options, use_ctc, use_lm", SINGLE_OPTIONS)
@pytest.mark.parametrize("cls", ["AttLoc", "AttCovLoc"])
def test_single_utterance_beam_search_on_the_device_equals_the_cpu(ctc_on_cpu, kernel_on_cpu, options, use_ctc,
                                                                   use_lm, cls):
    lengths = [14]
    enc, logp = inputs(lengths, np.float32, seed=9)
    decoder = toy_decoder(cls, np.float32, eos_bias=0.8, layers=2)
    lm = toy_lm(np.float32) if use_lm else None
    ctc = logp[0] if use_ctc else None
    want = beam_search(decoder, enc[0], ctc_logp=ctc, lm=lm, options=options)
    got, reads = reads_during(lambda: beam_search(decoder, on(enc[0]), ctc_logp=None if ctc is None else on(ctc),
                                                  lm=lm, options=options))
    assert reads <= len(kernel_on_cpu) + 10  # one flag per step, the records once
    assert len(ctc_on_cpu) == (len(kernel_on_cpu) if use_ctc else 0)
    assert [h.yseq.tolist() for h in got] == [h.yseq.tolist() for h in want]
    for g, w in zip(got, want):
        assert_same_hypothesis(g, w, np.float32)
