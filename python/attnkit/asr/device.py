"""The decoder loop on the GPU: ESPnet's RNN decoder step, greedy search, single-utterance beam
search and batched beam search on CuPy arrays, with no host round trip per step but the
end-of-search check.

``DeviceDecoder`` holds a copy of an ``RNNDecoder``'s weights on one GPU (``decoder.on_device(like)``
makes it once per device) and mirrors its ``prepare`` / ``init_state`` / ``step`` / ``select`` on
arrays of that device: the attention in attnkit's CUDA step (AttAdd, AttLoc, AttCov, AttCovLoc),
the embedding as a row gather of the tabulated cell-0 gates, the cells and the output layer as
CuPy products (cuBLAS) and elementwise kernels, the same formulas as the CPU decoder.

``greedy_search``, ``beam_search`` and ``batch_beam_search`` (attnkit.asr.search) come here when
``enc`` is a CuPy array. Tokens, scores, back-pointers, attention weights and ESPnet's ended-hypothesis bookkeeping
(scores by length for ``end_detect``) stay on the device; each step the host reads one flag (has
every utterance ended?), and the results come back in one copy at the end, where they are built
by the CPU search's own code (``_Ended``, ``_Alignment``), so ranking, n-best and score
normalisation are the CPU's. Rows are not dropped as utterances stop (that would need the host
to know which): ESPnet also runs them to the end, and a stopped utterance records nothing more.
CTC prefix scores (``ctc_weight``) run on the device too (src/cuda/ctc_prefix.cu), and so does an
``RNNLM`` for shallow fusion (``DeviceLM``), and the batched search's CTC window, whose frame
bounds stay on the device (ESPnet reads them back every step).

Not yet run on a GPU (none has been lent to this project so far): tests/test_cuda_glue_decoder.py
runs these loops on a NumPy stand-in for CuPy, through the GPU plumbing, against the CPU searches.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from attnkit._arrays import describe, is_device_array
from attnkit._core import UnsupportedError
from attnkit._cuda import GpuCall
from attnkit.asr._rows import select_rows
from attnkit.asr.decoder import DecoderPrepared, DecoderState, RNNDecoder, log_softmax
from attnkit.asr.lm import LMState, RNNLM
from attnkit.asr.rnn import gru_from_gates, lstm_from_gates, lstm_gate_scale
from attnkit.espnet._device import GPU_CLASSES


def on_device(model, like):
    """The device twin of ``model`` (an ``RNNDecoder``: a DeviceDecoder; an ``RNNLM``: a
    DeviceLM) for the GPU of CuPy array ``like``, made once per device."""
    twin = DeviceDecoder if isinstance(model, RNNDecoder) else DeviceLM
    call = GpuCall(f"{type(model).__name__}.on_device", {"like": like})
    cache = model.__dict__.setdefault("_on_device", {})
    key = (call.lib.name, call.device)
    if key not in cache:
        cache[key] = twin(model, call)
    return cache[key]


def _cupy_of(call: GpuCall):
    xp = getattr(call.lib, "xp", None)
    if xp is None:
        raise UnsupportedError(f"{call.op}: like must be a CuPy array (the decoder loop runs on CuPy arrays), "
                               f"got a {call.lib.name} array")
    return xp


def _uploader(xp):
    """Host array -> C-contiguous device array."""
    return lambda a: xp.asarray(np.ascontiguousarray(a))


class DeviceDecoder:
    """An ``RNNDecoder``'s step on one GPU (see the module docstring); made by
    ``RNNDecoder.on_device(like)``. tokens and states are arrays of that device; ``rows`` (the
    utterance of each row) stays a host array, as the attention's."""

    def __init__(self, decoder: RNNDecoder, call: GpuCall):
        op = call.op
        xp = _cupy_of(call)
        name = type(decoder.attention).__name__
        if name not in GPU_CLASSES:
            raise UnsupportedError(f"{op}: the decoder's attention {name} runs on the CPU only so far "
                                   f"(GPU steps: {', '.join(GPU_CLASSES)})")
        self.decoder, self.xp, self.device, self._lib = decoder, xp, call.device, call.lib
        self.lstm = decoder.rnn_type == "lstm"
        with call:
            up = _uploader(xp)
            self._token_gates = up(decoder._token_gates)
            # Products as x @ W^T with W^T stored contiguous ([K, A]), cuBLAS's preferred layout.
            self._w_cell0 = up(decoder._w_cell0.unpacked().T)
            # Cell 0's input product is the token table and _w_cell0 (its LSTM recurrent product
            # too): those weights are not copied again.
            self._cells = [{"w_ih": None if layer == 0 else up(c["w_ih"].unpacked().T),
                            "w_hh": None if layer == 0 and self.lstm else up(c["w_hh"].unpacked().T),
                            "b_ih": up(c["b_ih"]), "b_hh": up(c["b_hh"])} for layer, c in enumerate(decoder._cells)]
            self._w_out, self._b_out = up(decoder._w_out.unpacked().T), up(decoder._b_out)
            self._gate_scale = up(lstm_gate_scale(decoder.dunits, decoder.dtype)) if self.lstm else None

    def context(self):
        """A context with this decoder's device current (CuPy allocates on the current device)."""
        stream = self._lib.current_stream(self.device)
        return self._lib.running_on(self.device, stream, stream)

    def prepare(self, enc, lengths) -> DecoderPrepared:
        """The attention's cache of enc ``[B, T, E]`` (a GPU array) on the device; lengths on the host."""
        return DecoderPrepared(self.decoder.attention.prepare(enc, lengths))

    def init_state(self, prepared: DecoderPrepared, rows: np.ndarray) -> DecoderState:
        d, xp = self.decoder, self.xp
        n = rows.shape[0]
        zeros = tuple(xp.zeros((n, d.dunits), d.dtype) for _ in range(d.dlayers))
        c = tuple(xp.zeros((n, d.dunits), d.dtype) for _ in range(d.dlayers)) if self.lstm else None
        return DecoderState(zeros, c, d.attention.initial_state(prepared.attention, rows))

    def select(self, state: DecoderState, index) -> DecoderState:
        """The state of rows ``index`` (a GPU int64 array)."""
        return select_rows(state, index)

    def step(self, prepared: DecoderPrepared, tokens, state: DecoderState, rows: np.ndarray):
        """``RNNDecoder.step`` on the device: tokens ``[N]`` int64 on the device, rows ``[N]`` on the
        host. Returns (logp ``[N, V]``, new state, the attention's output), all on the device."""
        d, xp = self.decoder, self.xp
        out = d.attention.step(prepared.attention, state.h[0], state.attention, rows=rows)
        # Cell 0's gates: the tabulated [E[y] W_emb^T + b_ih] rows plus [ctx; h0] [W_ctx | W_hh]^T
        # + b_hh (LSTM), or ctx W_ctx^T (GRU, whose recurrent part stays apart), as on the CPU.
        if self.lstm:
            gates0 = self._token_gates[tokens] + (xp.concatenate([out.context, state.h[0]], axis=1) @ self._w_cell0
                                                  + self._cells[0]["b_hh"])
        else:
            gates0 = self._token_gates[tokens] + out.context @ self._w_cell0
        h, c, x = [], [], None
        for layer, p in enumerate(self._cells):
            if self.lstm:
                gates = gates0 if layer == 0 else (state.h[layer] @ p["w_hh"] + p["b_hh"]) + (x @ p["w_ih"] + p["b_ih"])
                hl, cl = lstm_from_gates(gates, state.c[layer], self._gate_scale)
                c.append(cl)
            else:
                gx = gates0 if layer == 0 else x @ p["w_ih"] + p["b_ih"]
                hl = gru_from_gates(gx, state.h[layer] @ p["w_hh"] + p["b_hh"], state.h[layer])
            h.append(hl)
            x = hl
        top = xp.concatenate([h[-1], out.context], axis=1) if d.context_residual else h[-1]
        logp = log_softmax(top @ self._w_out + self._b_out)
        return logp, DecoderState(tuple(h), tuple(c) if self.lstm else None, out.state), out


class DeviceLM:
    """An ``RNNLM``'s ``predict`` / ``select`` on one GPU, the CPU's formulas on CuPy arrays; made
    by ``RNNLM.on_device(like)``. Its ``final`` is 0, as the CPU LM's."""

    def __init__(self, lm: RNNLM, call: GpuCall):
        xp = _cupy_of(call)
        self.lm, self.xp, self.lstm = lm, xp, lm.rnn_type == "lstm"
        with call:
            up = _uploader(xp)
            self._token_gates = up(lm._token_gates)  # layer 0's input product per token, with its bias
            self._cells = [{"w_ih": None if layer == 0 else up(c["weight_ih"].unpacked().T),
                            "w_hh": up(c["weight_hh"].unpacked().T), "b_ih": up(c["bias_ih"]),
                            "b_hh": up(c["bias_hh"])} for layer, c in enumerate(lm._cells)]
            self._lo_w, self._lo_b = up(lm._lo_w.unpacked().T), up(lm._lo_b)
            self._gate_scale = up(lstm_gate_scale(lm.n_units, lm.dtype)) if self.lstm else None

    def predict(self, state: LMState | None, y) -> tuple[LMState, object]:
        """``RNNLM.predict`` for tokens y ``[N]`` (int64 on the device): (new state, log p ``[N, V]``)."""
        xp, n, U = self.xp, y.shape[0], self.lm.n_units
        if state is None:
            zeros = tuple(xp.zeros((n, U), self.lm.dtype) for _ in self._cells)
            state = LMState(zeros, tuple(xp.zeros((n, U), self.lm.dtype) for _ in self._cells) if self.lstm else None)
        h, c, x = [], [], None
        for layer, p in enumerate(self._cells):
            gx = self._token_gates[y] if layer == 0 else x @ p["w_ih"] + p["b_ih"]
            gh = state.h[layer] @ p["w_hh"] + p["b_hh"]
            if self.lstm:
                hl, cl = lstm_from_gates(gh + gx, state.c[layer], self._gate_scale)  # the CPU's order of sums
                c.append(cl)
            else:
                hl = gru_from_gates(gx, gh, state.h[layer])
            h.append(hl)
            x = hl
        return LMState(tuple(h), tuple(c) if self.lstm else None), log_softmax(x @ self._lo_w + self._lo_b)

    def select(self, state: LMState | None, index) -> LMState | None:
        """The state of rows ``index`` (a GPU int64 array)."""
        return select_rows(state, index)


def _host(xp, x) -> np.ndarray:
    """A device array copied to the host (waits for the stream)."""
    return xp.asnumpy(x)


def _device_batch(op: str, dd: DeviceDecoder, enc, lengths):
    """The device twin of search._padded_batch: (enc of the utterances with frames, padded frames
    zeroed, cut to their longest; their lengths on the host; their indices)."""
    if not is_device_array(enc):
        raise TypeError(f"{op}: enc must be a GPU array, got {describe(enc)}")
    d, xp = dd.decoder, dd.xp
    if enc.ndim != 3 or enc.shape[-1] != d.eprojs:
        raise ValueError(f"{op}: enc must be [B, T, E] with E = eprojs = {d.eprojs}, got shape {tuple(enc.shape)}")
    if enc.dtype != d.dtype:
        raise TypeError(f"{op}: enc must have the decoder's dtype {d.dtype}, got {enc.dtype}")
    from attnkit.asr.search import _utterances

    B, T, _ = enc.shape
    lengths, keep = _utterances(op, lengths, B, T, stacklevel=6)  # the user's search call
    if keep.size == 0:
        return None, lengths, keep
    lens = lengths[keep]
    t_max = int(lens.max())
    sub = enc[xp.asarray(keep)][:, :t_max]
    padded = xp.arange(t_max)[None, :] >= xp.asarray(lens)[:, None]
    sub = xp.where(padded[:, :, None], xp.zeros((), sub.dtype), sub)  # ESPnet's mask_by_length
    return sub, lens, keep


def greedy_search(decoder: RNNDecoder, enc, lengths, maxlenratio: float, penalty: float):
    """``search.greedy_search`` on the device (its checks of the options done by the caller)."""
    dd = decoder.on_device(enc)
    with dd.context():
        return _greedy(dd, enc, lengths, maxlenratio, penalty)


def _greedy(dd: DeviceDecoder, enc, lengths, maxlenratio: float, penalty: float):
    from attnkit.asr.search import _empty_hypothesis, _hypothesis, _max_length

    op = "greedy_search"
    decoder, xp, eos = dd.decoder, dd.xp, dd.decoder.eos
    sub, lens, keep = _device_batch(op, dd, enc, lengths)
    results = [_empty_hypothesis(decoder, 0) for _ in range(enc.shape[0])]
    if sub is None:
        return results
    prepared = dd.prepare(sub, lens)
    n = keep.size
    rows = np.arange(n)
    maxlen = np.array([_max_length(maxlenratio, int(m)) for m in lens])
    maxlen_dev = xp.asarray(maxlen)
    state = dd.init_state(prepared, rows)
    tokens = xp.full(n, decoder.sos, np.int64)
    score = xp.zeros(n, decoder.dtype)
    finished = xp.zeros(n, bool)
    last = xp.zeros(n, np.int64)  # the step at which each row ended
    every = xp.arange(n)
    toks, scores, weights, peaks = [], [], [], []
    for i in range(int(maxlen.max())):
        logp, state, att = dd.step(prepared, tokens, state, rows)
        tokens = logp.argmax(axis=1)
        score = score + logp[every, tokens]
        toks.append(tokens)
        scores.append(score)
        weights.append(att.weights)
        peaks.append(att.peak)
        done = (tokens == eos) | (maxlen_dev - 1 == i)
        last = xp.where(done & ~finished, i, last)
        finished = finished | done
        if _host(xp, finished.all()):
            break
    toks_h, scores_h, last_h = _host(xp, xp.stack(toks)), _host(xp, xp.stack(scores)), _host(xp, last)
    weights_h, peaks_h = _host(xp, xp.stack(weights)), _host(xp, xp.stack(peaks))
    for m in range(n):
        e = int(last_h[m])
        y = np.concatenate([[decoder.sos], toks_h[:e + 1, m]]).astype(np.int64)
        if e == maxlen[m] - 1:  # forced to end: eos appended without a score (even after an eos)
            y = np.append(y, eos)
        results[keep[m]] = _hypothesis(y, scores_h[e, m] + (e + 1) * penalty, eos, int(lens[m]),
                                       weights_h[:e + 1, m], peaks_h[:e + 1, m])
    return results


def batch_beam_search(decoder: RNNDecoder, enc, lengths, ctc_logp, lm, options, normalize: bool):
    """``search.batch_beam_search`` on the device (trans_token checked by the caller)."""
    if lm is not None and not isinstance(lm, RNNLM):
        raise UnsupportedError(f"batch_beam_search: on the GPU lm must be an attnkit.asr.RNNLM, got {describe(lm)}")
    dd = decoder.on_device(enc)
    with dd.context():
        return _batch_beam(dd, enc, lengths, ctc_logp, None if lm is None else lm.on_device(enc), options, normalize)


def beam_search(decoder: RNNDecoder, enc, ctc_logp, lm, options):
    """``search.beam_search`` (ESPnet's ``recognize_beam``) on the device for one utterance enc
    ``[T, E]``, with CTC (states in the decoder's dtype) and an RNNLM; the caller checked the rest."""
    op = "beam_search"
    if lm is not None and not isinstance(lm, RNNLM):
        raise UnsupportedError(f"{op}: on the GPU lm must be an attnkit.asr.RNNLM, got {describe(lm)}")
    dd = decoder.on_device(enc)
    d = dd.decoder
    if enc.ndim != 2 or enc.shape[-1] != d.eprojs:
        raise ValueError(f"{op}: enc must be [T, E] with E = eprojs = {d.eprojs}, got shape {tuple(enc.shape)}")
    if enc.dtype != d.dtype:
        raise TypeError(f"{op}: enc must have the decoder's dtype {d.dtype}, got {enc.dtype}")
    if options.ctc_weight > 0 and d.dtype != np.float32:
        raise UnsupportedError(f"{op}: on the GPU joint CTC decoding of one utterance needs a float32 decoder "
                               f"(ESPnet keeps this scorer's states in float32 whatever the model's dtype), got "
                               f"{d.dtype}; batch_beam_search runs it in float64")
    with dd.context():
        x = _device_ctc(op, dd, None if ctc_logp is None else ctc_logp[None], enc[None].shape)[0] \
            if options.ctc_weight > 0 else None
        prepared = dd.prepare(enc[None], np.array([enc.shape[0]]))
        dlm = None if lm is None else lm.on_device(enc)
        while True:
            found = _recognize_beam(dd, prepared, x, dlm, options)
            if found or options.minlenratio <= 0:
                return found
            options = replace(options, minlenratio=max(0.0, options.minlenratio - 0.1))


def _recognize_beam(dd: DeviceDecoder, prepared: DecoderPrepared, x, dlm: "DeviceLM | None", o):
    """The device twin of search._recognize_beam. The running hypotheses are always ``beam`` rows:
    a row that ended (or was never filled) holds the score -inf, so its children lose every
    comparison, which keeps ESPnet's pool of the beam best children of the running ones without
    the host knowing which rows run. The host reads one flag per step (search over?)."""
    from attnkit.asr.ctc_prefix import CTCPrefixScore
    from attnkit.asr.search import CTC_SCORING_RATIO, END_DETECT_MARGIN, END_DETECT_STEPS, _max_length

    decoder, xp = dd.decoder, dd.xp
    V, eos, beam = decoder.vocab_size, decoder.eos, o.beam_size
    maxlen = _max_length(o.maxlenratio, prepared.frames)
    minlen = int(o.minlenratio * maxlen)
    k = min(beam, V)
    rows = np.zeros(beam, np.int64)
    state = dd.init_state(prepared, rows)
    score = xp.full(beam, -np.inf, decoder.dtype)
    score[0] = 0                                              # one running hypothesis at first
    last = xp.full(beam, decoder.sos, np.int64)
    lm_state = None
    scorer = None
    if x is not None:
        scorer = CTCPrefixScore(x, decoder.blank, eos)  # float32 states, as ESPnet (and the decoder)
        ctc_r = xp.repeat(scorer.initial_state()[:, :, None], beam, axis=2)   # [T, 2, beam]
        ctc_prev = xp.zeros(beam, decoder.dtype)
        ctc_beam = min(V, int(beam * CTC_SCORING_RATIO)) if o.ctc_weight != 1.0 else V
        k = min(beam, ctc_beam)
    best = xp.full((), -np.inf, decoder.dtype)
    best_len = xp.full(maxlen + 3, -np.inf, decoder.dtype)  # by yseq length: i + 2, or i + 3 when forced
    has_len = xp.zeros(maxlen + 3, bool)
    steps = []  # per step: parent, token, weights, peak, ended score, ended mask
    for i in range(maxlen):
        logp, new_state, att = dd.step(prepared, last, state, rows)
        local = logp
        if dlm is not None:
            lm_new, lm_logp = dlm.predict(lm_state, last)
            local = logp + o.lm_weight * lm_logp
        if scorer is None:
            pick = xp.argsort(-local, axis=1, kind="stable")[:, :k]   # [beam, k] per parent, best first
            tokens, child = pick, xp.take_along_axis(local, pick, axis=1)
        else:
            cand = xp.argsort(-logp, axis=1, kind="stable")[:, :ctc_beam]  # by the attention score alone
            psi, ctc_r_new = scorer.score(last, i, cand, ctc_r)
            joint = (1.0 - o.ctc_weight) * xp.take_along_axis(logp, cand, axis=1) \
                + o.ctc_weight * (psi - ctc_prev[:, None])
            if dlm is not None:
                joint = joint + o.lm_weight * xp.take_along_axis(lm_logp, cand, axis=1)
            pick = xp.argsort(-joint, axis=1, kind="stable")[:, :k]
            tokens, child = xp.take_along_axis(cand, pick, axis=1), xp.take_along_axis(joint, pick, axis=1)
        total = score[:, None] + child                         # dead parents: -inf
        order = xp.argsort(-total.reshape(-1), kind="stable")[:beam]
        parent, rank = order // k, order % k
        token = tokens[parent, rank]
        score = total[parent, rank]
        alive = score > -np.inf
        forced = i == maxlen - 1
        done = alive & ((token == eos) | forced)
        length = i + 3 if forced else i + 2                   # yseq length with its eos
        ended = done & (length > minlen)
        s = score + (i + 1) * o.penalty                         # an RNNLM's final score is 0
        found = xp.where(ended, s, -np.inf)
        best = xp.maximum(best, found.max())
        best_len[length] = xp.maximum(best_len[length], found.max())
        has_len[length] = has_len[length] | ended.any()
        steps.append((parent, token, att.weights, att.peak, s, ended))
        running = alive & ~done
        stop = ~running.any()
        if o.maxlenratio == 0 and i >= END_DETECT_STEPS - 1:
            recent = slice(i - END_DETECT_STEPS + 1, i + 1)        # yseq lengths i - 2 .. i
            stop = stop | (has_len[recent] & (best_len[recent] - best < END_DETECT_MARGIN)).all()
        if _host(xp, stop):
            break
        state, last = dd.select(new_state, parent), token
        score = xp.where(running, score, -np.inf)
        if dlm is not None:
            lm_state = dlm.select(lm_new, parent)
        if scorer is not None:
            slot = pick[parent, rank]
            ctc_r, ctc_prev = ctc_r_new[:, :, parent, slot], psi[parent, slot]
    return _single_results(decoder, steps, maxlen, o, prepared.frames, xp)


def _single_results(decoder, steps, maxlen, o, frames, xp):
    """The hypotheses of ``_recognize_beam``, built on the host from the per-step records (one copy
    of each) in the CPU search's order of ended entries (step, then row)."""
    from attnkit.asr.search import _Alignment, _Ended

    eos = decoder.eos
    parent, token = _host(xp, xp.stack([s[0] for s in steps])), _host(xp, xp.stack([s[1] for s in steps]))
    weights, peaks = _host(xp, xp.stack([s[2] for s in steps])), _host(xp, xp.stack([s[3] for s in steps]))
    scores, ended = _host(xp, xp.stack([s[4] for s in steps])), _host(xp, xp.stack([s[5] for s in steps]))
    alignment = _Alignment()
    for i in range(len(steps)):
        alignment.push(weights[i], peaks[i], None if i == 0 else parent[i - 1])  # step i's rows: step i-1's picks
    result = _Ended()
    for i in range(len(steps)):
        for m in np.flatnonzero(ended[i]):
            y, row = [], int(m)
            for s in range(i, -1, -1):
                y.append(int(token[s, row]))
                row = int(parent[s, row])
            y = [decoder.sos] + y[::-1] + ([eos] if i == maxlen - 1 else [])
            result.add(scores[i, m], np.array(y, np.int64), i, int(parent[i, m]))
    return result.results(o.nbest, alignment, eos, False, frames)


def _device_ctc(op: str, dd: DeviceDecoder, ctc_logp, enc_shape):
    """ctc_logp ``[B, T, V]`` checked as a device array of enc's batch and frames, in the decoder's dtype."""
    d = dd.decoder
    if ctc_logp is None:
        raise ValueError(f"{op}: ctc_logp must be given when options.ctc_weight > 0, got None")
    if not is_device_array(ctc_logp):
        raise TypeError(f"{op}: ctc_logp must be a GPU array like enc, got {describe(ctc_logp)}")
    shape = tuple(enc_shape[:2]) + (d.vocab_size,)
    if tuple(ctc_logp.shape) != shape:
        raise ValueError(f"{op}: ctc_logp must have shape {shape} (B x frames x vocab_size, as enc), "
                         f"got {tuple(ctc_logp.shape)}")
    if ctc_logp.dtype.kind != "f":
        raise TypeError(f"{op}: ctc_logp must be a float array, got {describe(ctc_logp)}")
    return ctc_logp.astype(d.dtype, copy=False)


def _batch_beam(dd: DeviceDecoder, enc, lengths, ctc_logp, dlm: DeviceLM | None, options, normalize: bool):
    from attnkit.asr.ctc_prefix import LOGZERO, CTCPrefixScoreBatch
    from attnkit.asr.search import (CTC_SCORING_RATIO, END_DETECT_MARGIN, END_DETECT_STEPS, _empty_hypothesis,
                                    _max_length, window_weights)

    op = "batch_beam_search"
    decoder, xp = dd.decoder, dd.xp
    eos, V, beam = decoder.eos, decoder.vocab_size, options.beam_size
    x = _device_ctc(op, dd, ctc_logp, enc.shape) if options.ctc_weight > 0 else None
    sub, lens, keep = _device_batch(op, dd, enc, lengths)
    results = [[_empty_hypothesis(decoder, 0)] for _ in range(enc.shape[0])]
    if sub is None:
        return results
    prepared = dd.prepare(sub, lens)
    B = keep.size
    att_weight = 1.0 - options.ctc_weight
    scorer = ctc_state = lm_state = uniform = None
    margin = options.ctc_window_margin
    if x is not None:
        scorer = CTCPrefixScoreBatch(x[xp.asarray(keep)][:, :sub.shape[1]], lens, decoder.blank, eos, margin=margin)
        scoring_num = min(int(beam * CTC_SCORING_RATIO) if att_weight > 0 else 0, V)
    max_hlen = int(lens.max())
    maxlen = _max_length(options.maxlenratio, max_hlen)
    minlen = int(options.minlenratio * max_hlen)
    rows = np.repeat(np.arange(B), beam)  # row j * beam + k -> utterance j, for the whole search
    if scorer is not None and margin > 0:
        uniform = decoder.attention._uniform(prepared.attention, rows)  # the coverage classes' window weights
    rows_dev = xp.asarray(rows)
    lens_dev = xp.asarray(lens)[:, None]
    base = xp.asarray(np.arange(B) * beam)[:, None]
    state = dd.init_state(prepared, rows)
    vscores = xp.zeros((B, beam), decoder.dtype)
    last = xp.full(B * beam, decoder.sos, np.int64)
    stop = xp.zeros(B, bool)
    # end_detect's bookkeeping: the best ended score per utterance, and per yseq length (eos
    # included: i + 2 for an eos taken at step i, i + 3 for a hypothesis ended by the last step).
    best = xp.full(B, -np.inf, decoder.dtype)
    best_len = xp.full((B, maxlen + 3), -np.inf, decoder.dtype)
    has_len = xp.zeros((B, maxlen + 3), bool)
    steps = []  # per step: src, label, weights, peak, and (ended score, ended mask, from eos) or None
    for i in range(maxlen):
        logp, new_state, att = dd.step(prepared, last, state, rows)
        if dlm is not None:  # the CPU search's order of sums: attention, LM, CTC
            lm_new, lm_logp = dlm.predict(lm_state, last)
            logp = att_weight * logp + options.lm_weight * lm_logp
        elif scorer is not None:
            logp = att_weight * logp
        if scorer is not None:
            local = logp
            local[:, decoder.blank] = LOGZERO
            part = xp.argsort(-local, axis=1, kind="stable")[:, :scoring_num] if scoring_num > 0 else None
            window = window_weights(att, uniform) if margin > 0 else None
            ctc_local, ctc_scores = scorer(last, i, ctc_state, part, window, utterances=rows_dev)
            logp = local + options.ctc_weight * ctc_local
        local = logp.reshape(B, beam, V)
        if i == 0:
            local = xp.concatenate([local[:, :1], xp.full_like(local[:, 1:], LOGZERO)], axis=1)
        eos_v = local[:, :, eos] + vscores
        cand = vscores[:, :, None] + local
        cand[:, :, eos] = local[:, :, eos] + cand.dtype.type(LOGZERO)  # eos never stays in the beam
        cand = cand.reshape(B, beam * V)
        best_ids = xp.argsort(-cand, axis=1, kind="stable")[:, :beam]
        top = xp.take_along_axis(cand, best_ids, axis=1)
        src = (best_ids // V + base).reshape(-1)
        label = (best_ids % V).reshape(-1)
        ended = None
        if i >= minlen:
            above = eos_v > top[:, -1:]
            live = ~stop[:, None]
            from_eos = above & live & (i + 1 <= lens_dev)
            at_end = ~above & live & (i == maxlen - 1)
            s = xp.where(from_eos, eos_v, top) + (i + 1) * options.penalty
            mask = (from_eos | at_end) & (s != 0)  # ESPnet's ``if _vscore:`` drops a score of exactly 0
            ended = (s, mask, from_eos)
            found = xp.where(mask, s, -np.inf)
            best = xp.maximum(best, found.max(axis=1))
            for length, which in ((i + 2, from_eos), (i + 3, ~from_eos)):
                here = xp.where(which, found, -np.inf).max(axis=1)
                best_len[:, length] = xp.maximum(best_len[:, length], here)
                has_len[:, length] = has_len[:, length] | (mask & which).any(axis=1)
        steps.append((src, label, att.weights, att.peak, ended))
        if i >= END_DETECT_STEPS - 1:
            recent = slice(i - END_DETECT_STEPS + 1, i + 1)  # yseq lengths i - 2 .. i
            near = has_len[:, recent] & (best_len[:, recent] - best[:, None] < END_DETECT_MARGIN)
            stop = stop | near.all(axis=1)
        if _host(xp, stop.all()):
            break
        state, vscores, last = dd.select(new_state, src), top, label
        if scorer is not None:
            ctc_state = scorer.select_rows(ctc_scores, src, label)
        if dlm is not None:
            lm_state = dlm.select(lm_new, src)
    return _beam_results(decoder, steps, B, beam, lens, keep, results, options, normalize, xp)


def _beam_results(decoder, steps, B, beam, lens, keep, results, options, normalize, xp):
    """The hypotheses, built on the host from the device's per-step records (one copy of each),
    in the CPU search's order of ended entries (step, then utterance and beam slot)."""
    from attnkit.asr.search import _Alignment, _Ended, _empty_hypothesis

    eos = decoder.eos
    src = _host(xp, xp.stack([s[0] for s in steps]))      # [S, B*beam]
    label = _host(xp, xp.stack([s[1] for s in steps]))
    weights = _host(xp, xp.stack([s[2] for s in steps]))  # [S, B*beam, T] (or [S, B*beam, H, T])
    peaks = _host(xp, xp.stack([s[3] for s in steps]))
    logged = [i for i, s in enumerate(steps) if s[4] is not None]
    if logged:
        scores = _host(xp, xp.stack([steps[i][4][0] for i in logged]))
        masks = _host(xp, xp.stack([steps[i][4][1] for i in logged]))
        from_eos = _host(xp, xp.stack([steps[i][4][2] for i in logged]))
    alignment = _Alignment()
    for i in range(len(steps)):
        alignment.push(weights[i], peaks[i], None if i == 0 else src[i - 1])

    def yseq(step: int, row: int) -> list[int]:
        """The tokens of ``row`` after ``step``'s selection (step -1: just sos)."""
        out = []
        for s in range(step, -1, -1):
            out.append(int(label[s, row]))
            row = int(src[s, row])
        return [decoder.sos] + out[::-1]

    ended = [_Ended() for _ in range(B)]
    for n, i in enumerate(logged):
        for j, k in np.argwhere(masks[n]):
            r = j * beam + k
            if from_eos[n, j, k]:
                y, row = yseq(i - 1, r), r
            else:
                y, row = yseq(i, r), int(src[i, r])
            ended[j].add(scores[n, j, k], np.array(y + [eos], np.int64), i, row)
    for j, e in enumerate(ended):
        frames = int(lens[j])
        results[keep[j]] = (e.results(options.nbest, alignment, eos, normalize, frames) if e.entries
                            else [_empty_hypothesis(decoder, frames)])
    return results
