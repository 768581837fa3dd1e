"""Decoding searches over ``RNNDecoder`` with ESPnet's espnet1 semantics, vectorised over hypotheses.

Spec: /work/shared/spec/espnet_attention.md, sections 3.4 (``recognize_beam``: one utterance),
3.5 (``recognize_beam_batch``: a padded batch) and quirk 4.15. Each search runs ONE decoder step per
output position for all its rows (hypotheses x utterances); candidate selection, CTC prefix scoring
and the LM are array operations over those rows. Per-hypothesis Python work is left only where a
hypothesis ends (ESPnet's bookkeeping of ended hypotheses) and where results are built.

Every result carries the decoded hypothesis' own alignment: the attention weights of each decoder
step that produced it, traced back through the beam's reorderings (``Hypothesis.weights``).
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from attnkit._arrays import describe, is_device_array, lengths_array
from attnkit._core import UnsupportedError
from attnkit.asr import device
from attnkit.asr.ctc_prefix import LOGZERO, CTCPrefixScore, CTCPrefixScoreBatch
from attnkit.asr.decoder import DecoderPrepared, RNNDecoder
from attnkit.espnet._base import CoverageState, LocRecState

#: ESPnet's CTC pre-selection width factor (``CTC_SCORING_RATIO``): floor(1.5 * beam) candidates.
CTC_SCORING_RATIO = 1.5
#: ``end_detect``'s threshold D_end = log(1 * exp(-10)) and its look-back M (Watanabe et al. eq. 50).
END_DETECT_MARGIN = math.log(1 * math.exp(-10))
END_DETECT_STEPS = 3


@dataclass(frozen=True)
class SearchOptions:
    """ESPnet's ``recog_args`` for the searches, with the espnet1 CLI defaults.

    beam_size; penalty (added per emitted token, eos included, when a hypothesis ends);
    ctc_weight in [0, 1] (needs ``ctc_logp``; 0 ignores it, as ESPnet's E2E wrapper, which then
    computes no CTC); maxlenratio (0: maxlen = T, else max(1, floor(ratio * T))); minlenratio;
    nbest; lm_weight (used only with an LM); ctc_window_margin (batched search only: CTC frames
    windowed around the attention, 0 = off).
    """

    beam_size: int = 1
    penalty: float = 0.0
    ctc_weight: float = 0.0
    maxlenratio: float = 0.0
    minlenratio: float = 0.0
    nbest: int = 1
    lm_weight: float = 0.1
    ctc_window_margin: int = 0

    def __post_init__(self):
        op = "SearchOptions"
        for name in ("beam_size", "nbest", "ctc_window_margin"):
            v = getattr(self, name)
            low = 0 if name == "ctc_window_margin" else 1
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{op}: {name} must be an integer >= {low}, got {describe(v)}")
        for name in ("penalty", "ctc_weight", "maxlenratio", "minlenratio", "lm_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{op}: {name} must be a finite real number, got {describe(v)}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"{op}: ctc_weight must lie in [0, 1], got {self.ctc_weight}")

    @classmethod
    def from_recog_args(cls, args: Any) -> "SearchOptions":
        """From an ESPnet ``recog_args`` namespace (missing fields take the defaults)."""
        names = ("beam_size", "penalty", "ctc_weight", "maxlenratio", "minlenratio", "nbest", "lm_weight",
                 "ctc_window_margin")
        return cls(**{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})


@dataclass(frozen=True, eq=False)
class Hypothesis:
    """One decoded hypothesis.

    tokens ``[L]`` int64 without sos and the trailing eos; yseq: ESPnet's ``yseq`` (sos first, eos
    last; ESPnet appends a second eos when a hypothesis picks eos at the forced last step, and so
    does this); score: as ESPnet reports it (summed log-probabilities with penalty, LM and CTC
    weights; divided by len(yseq) in the batched search with ``normalize_score``); weights
    ``[S, T]`` (multi-head ``[S, H, T]``) the attention weights of the S decoder steps that
    produced the hypothesis, and peaks ``[S]`` their argmax frames: the decoded alignment.
    """

    tokens: np.ndarray
    yseq: np.ndarray
    score: float
    weights: np.ndarray
    peaks: np.ndarray


class _Alignment:
    """Per-step attention weights of all rows, with back-pointers to trace one hypothesis."""

    def __init__(self):
        self._weights: list[np.ndarray] = []
        self._peaks: list[np.ndarray] = []
        self._parents: list[np.ndarray | None] = []

    def push(self, weights: np.ndarray, peaks: np.ndarray, parents: np.ndarray | None) -> None:
        """Step s's weights ``[N_s, ...]``; parents ``[N_s]``: each row's row at step s-1 (None:
        the same row)."""
        self._weights.append(weights)
        self._peaks.append(peaks)
        self._parents.append(parents)

    def trace(self, step: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [row]
        for s in range(step, 0, -1):
            parents = self._parents[s]
            rows.append(rows[-1] if parents is None else int(parents[rows[-1]]))
        rows.reverse()
        return (np.stack([self._weights[s][r] for s, r in enumerate(rows)]),
                np.array([self._peaks[s][r] for s, r in enumerate(rows)], dtype=np.int64))


class _Ended:
    """One utterance's ended hypotheses, with ESPnet's ``end_detect`` in O(1) per step."""

    def __init__(self):
        self.entries: list[tuple[Any, np.ndarray, int, int]] = []  # (score, yseq, step, row)
        self._best = None
        self._best_by_length: dict[int, Any] = {}

    def add(self, score, yseq: np.ndarray, step: int, row: int) -> None:
        self.entries.append((score, yseq, step, row))
        if self._best is None or score > self._best:
            self._best = score
        n = yseq.shape[0]
        if n not in self._best_by_length or score > self._best_by_length[n]:
            self._best_by_length[n] = score

    def end_detect(self, i: int) -> bool:
        """True when, for each of the last M lengths i, i-1, i-2 (yseq lengths), the best ended
        hypothesis of that length is more than |D_end| below the best of all."""
        if not self.entries:
            return False
        count = 0
        for m in range(END_DETECT_STEPS):
            best_here = self._best_by_length.get(i - m)
            if best_here is not None and best_here - self._best < END_DETECT_MARGIN:
                count += 1
        return count == END_DETECT_STEPS

    def results(self, nbest: int, alignment: _Alignment, eos: int, normalize: bool, frames: int) -> list[Hypothesis]:
        scored = [((s / y.shape[0]) if normalize else s, y, step, row) for s, y, step, row in self.entries]
        scored = sorted(scored, key=lambda e: e[0], reverse=True)[:nbest]  # stable, as ESPnet's sort
        return [_hypothesis(y, s, eos, frames, *alignment.trace(step, row)) for s, y, step, row in scored]


def _hypothesis(yseq: np.ndarray, score, eos: int, frames: int, weights: np.ndarray, peaks: np.ndarray) -> Hypothesis:
    """A result; the alignment is cut to the utterance's own ``frames``."""
    end = yseq.shape[0]
    while end > 1 and yseq[end - 1] == eos:
        end -= 1
    return Hypothesis(yseq[1:end].copy(), yseq, float(score), np.ascontiguousarray(weights[..., :frames]), peaks)


def _empty_hypothesis(decoder: RNNDecoder, frames: int) -> Hypothesis:
    """ESPnet's dummy result [sos, eos] with score -inf."""
    shape = (0, decoder.attention.aheads, frames) if decoder.attention.state_kind == "heads_list" else (0, frames)
    return Hypothesis(np.zeros(0, np.int64), np.array([decoder.sos, decoder.eos], np.int64), -math.inf,
                      np.zeros(shape, decoder.dtype), np.zeros(0, np.int64))


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[N, k]`` of each row's k largest values, largest first (torch.topk)."""
    if 4 * k < x.shape[1]:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def _max_length(ratio: float, frames: int) -> int:
    return frames if ratio == 0 else max(1, int(ratio * frames))


def _check_decoder(op: str, decoder) -> RNNDecoder:
    if not isinstance(decoder, RNNDecoder):
        raise TypeError(f"{op}: decoder must be an attnkit.asr.RNNDecoder, got {describe(decoder)}")
    return decoder


def _check_options(op: str, options) -> SearchOptions:
    if options is None:
        return SearchOptions()
    if not isinstance(options, SearchOptions):
        raise TypeError(f"{op}: options must be a SearchOptions, got {describe(options)}")
    return options


def _check_lm(op: str, lm, decoder: RNNDecoder):
    if lm is None:
        return None
    for method in ("predict", "buff_predict", "final", "select"):
        if not callable(getattr(lm, method, None)):
            raise TypeError(f"{op}: lm must have predict/buff_predict/final/select (attnkit.asr.RNNLM), "
                            f"got {describe(lm)}")
    if getattr(lm, "vocab_size", decoder.vocab_size) != decoder.vocab_size:
        raise ValueError(f"{op}: lm.vocab_size must equal the decoder's {decoder.vocab_size}, got {lm.vocab_size}")
    return lm


def _ctc_input(op: str, ctc_logp, options: SearchOptions, decoder: RNNDecoder, shape: tuple[int, ...]):
    """The CTC log-posteriors in the decoder's dtype, or None when CTC is off (ctc_weight 0)."""
    if options.ctc_weight == 0:
        return None
    if ctc_logp is None:
        raise ValueError(f"{op}: ctc_logp must be given when options.ctc_weight > 0 "
                         f"({options.ctc_weight}), got None")
    if not isinstance(ctc_logp, np.ndarray) or ctc_logp.dtype.kind != "f":
        raise TypeError(f"{op}: ctc_logp must be a float numpy.ndarray, got {describe(ctc_logp)}")
    if ctc_logp.shape != shape:
        raise ValueError(f"{op}: ctc_logp must have shape {shape} (frames x vocab_size, as enc), got {ctc_logp.shape}")
    return ctc_logp.astype(decoder.dtype, copy=False)


def _encoder(op: str, enc, ndim: int, decoder: RNNDecoder) -> np.ndarray:
    if is_device_array(enc):
        raise UnsupportedError(f"{op}: enc is a GPU array, but {op} runs on the CPU only so far (on the GPU: "
                               f"greedy_search, beam_search and batch_beam_search), got {describe(enc)}")
    if not isinstance(enc, np.ndarray):
        raise TypeError(f"{op}: enc must be a numpy.ndarray, got {describe(enc)}")
    if enc.ndim != ndim or enc.shape[-1] != decoder.eprojs:
        want = "[T, E]" if ndim == 2 else "[B, T, E]"
        raise ValueError(f"{op}: enc must be {want} with E = eprojs = {decoder.eprojs}, got shape {enc.shape}")
    if enc.dtype != decoder.dtype:
        raise TypeError(f"{op}: enc must have the decoder's dtype {decoder.dtype}, got {enc.dtype}")
    return enc


def _utterances(op: str, lengths, B: int, T: int, stacklevel: int) -> tuple[np.ndarray, np.ndarray]:
    """The checked lengths ``[B]`` (default all T) and the indices of the utterances that have
    frames; a warning names the others (``stacklevel`` points it at the caller's call)."""
    lengths = lengths_array(op, "lengths", np.full(B, T) if lengths is None else lengths, B, T, "T")
    keep = np.flatnonzero(lengths > 0)
    if keep.size < B:
        warnings.warn(f"{op}: utterance(s) {np.flatnonzero(lengths == 0).tolist()} have no encoder frames; "
                      f"they get an empty hypothesis", stacklevel=stacklevel)
    return lengths, keep


def _padded_batch(op: str, enc: np.ndarray, lengths, trans_token):
    """Valid utterances' (enc with padded frames zeroed, as ESPnet's ``mask_by_length``; lengths;
    trans_token) cut to T = max(lengths), and the indices of those utterances (length >= 1)."""
    B, T, _ = enc.shape
    lengths, keep = _utterances(op, lengths, B, T, stacklevel=4)
    if keep.size == 0:
        return None, lengths, None, keep
    t_max = int(lengths[keep].max())
    sub = np.array(enc[keep, :t_max])
    sub[np.arange(t_max)[None, :] >= lengths[keep][:, None]] = 0
    tau = None if trans_token is None else np.asarray(trans_token)[keep, :t_max]
    return sub, lengths[keep], tau, keep


def window_weights(out, uniform):
    """What ESPnet's batched search hands its CTC window: the attention state tensor, or the first
    entry of a list / tuple state (coverage: the initial uniform U, given as ``uniform`` for the
    step's rows; LocRec: w; multi-head: head 0). On the CPU or the GPU (AttLoc's state there is
    its weights)."""
    state = out.state
    if isinstance(state, CoverageState):
        return uniform
    if isinstance(state, LocRecState):
        return state.weights
    if out.weights.ndim == 3:
        return out.weights[:, 0]
    return state if isinstance(state, np.ndarray) else out.weights


# -- greedy -----------------------------------------------------------------------------------------

def greedy_search(decoder: RNNDecoder, enc, lengths=None, *, maxlenratio: float = 0.0, penalty: float = 0.0,
                  trans_token=None) -> list[Hypothesis]:
    """Greedy decoding of a padded batch: enc ``[B, T, E]``, lengths ``[B]`` (default all T).

    Each utterance runs until it picks eos or reaches its own maxlen (T_b, or
    max(1, floor(maxlenratio * T_b))), where eos is appended without a score, as in
    ``beam_search`` with beam 1 (which it equals, without CTC and LM). Finished rows leave the
    batch. Padded frames are zeroed first (as the batched search). trans_token ``[B, T]``: for a
    GDCAttLoc decoder only. Returns one Hypothesis per utterance (empty, with a warning, for a
    length-0 utterance). With ``enc`` a CuPy array the loop runs on its GPU (attnkit.asr.device;
    attention AttAdd, AttLoc, AttCov or AttCovLoc), the hypotheses come back as host arrays.
    """
    op = "greedy_search"
    decoder = _check_decoder(op, decoder)
    opts = SearchOptions(maxlenratio=maxlenratio, penalty=penalty)
    if is_device_array(enc):
        if trans_token is not None:
            raise UnsupportedError(f"{op}: trans_token (GDCAttLoc) runs on the CPU only so far, got one with a GPU enc")
        return device.greedy_search(decoder, enc, lengths, opts.maxlenratio, opts.penalty)
    enc = _encoder(op, enc, 3, decoder)
    sub, lens, tau, keep = _padded_batch(op, enc, lengths, trans_token)
    results = [_empty_hypothesis(decoder, 0) for _ in range(enc.shape[0])]
    if sub is None:
        return results
    prepared = decoder.prepare(sub, lens, trans_token=tau)
    eos = decoder.eos
    maxlen = np.array([_max_length(opts.maxlenratio, int(n)) for n in lens])
    active = np.arange(keep.size)
    state = decoder.init_state(prepared, active)
    yseq = np.full((keep.size, 1), decoder.sos, np.int64)
    score = np.zeros(keep.size, decoder.dtype)
    alignment, parents = _Alignment(), None
    for i in range(int(maxlen.max())):
        logp, new_state, att = decoder.step(prepared, yseq[:, -1], state, active)
        alignment.push(att.weights, att.peak, parents)
        tok = np.argmax(logp, axis=1)
        score = score + logp[np.arange(tok.shape[0]), tok]
        yseq = np.concatenate([yseq, tok[:, None]], axis=1)
        forced = maxlen[active] - 1 == i
        done = (tok == eos) | forced
        if not done.any():  # every row goes on as it is: no reorder (it was ~15% of a profiled step)
            state, parents = new_state, None
            continue
        for m in np.flatnonzero(done):
            y = np.append(yseq[m], eos) if forced[m] else yseq[m]
            results[keep[active[m]]] = _hypothesis(y, score[m] + (i + 1) * opts.penalty, eos, int(lens[active[m]]),
                                                   *alignment.trace(i, m))
        stay = np.flatnonzero(~done)
        if stay.size == 0:
            break
        state, parents = decoder.select(new_state, stay), stay
        active, yseq, score = active[stay], yseq[stay], score[stay]
    return results


# -- one utterance: recognize_beam --------------------------------------------------------------------

def beam_search(decoder: RNNDecoder, enc, *, ctc_logp=None, lm=None, options: SearchOptions | None = None,
                trans_token=None) -> list[Hypothesis]:
    """ESPnet's ``recognize_beam`` for one utterance: enc ``[T, E]``; ctc_logp ``[T, V]`` CTC
    log-posteriors (used when ``options.ctc_weight > 0``); lm: an ``RNNLM`` for shallow fusion;
    trans_token ``[T]``: for a GDCAttLoc decoder only.

    All of ESPnet's rules (spec 3.4): CTC candidates pre-selected by the attention score alone
    (floor(1.5 beam) of them), the pool of children truncated to ``beam`` after each parent (here:
    one stable sort over all parents' children, which is the same), eos forced at maxlen without a
    score, minlen = floor(minlenratio * maxlen), penalty * (i+1) and the LM's final score when a
    hypothesis ends, end detection only with maxlenratio == 0, raw scores (no length
    normalisation), and a re-run with minlenratio - 0.1 when nothing ended. The running hypotheses
    are the rows of one decoder step. A beam wider than the vocabulary keeps every label of each
    parent (ESPnet's topk raises there). Returns the ``nbest`` best hypotheses. With ``enc`` (and
    ``ctc_logp``) CuPy arrays the search runs on their GPU (attnkit.asr.device; CTC there needs a
    float32 decoder, as ESPnet keeps the CTC states in float32).
    """
    op = "beam_search"
    decoder = _check_decoder(op, decoder)
    options = _check_options(op, options)
    lm = _check_lm(op, lm, decoder)
    if is_device_array(enc):
        if trans_token is not None:
            raise UnsupportedError(f"{op}: trans_token (GDCAttLoc) runs on the CPU only so far, got one with a GPU enc")
        if enc.shape[0] == 0:
            warnings.warn(f"{op}: enc has no frames; returning an empty hypothesis", stacklevel=2)
            return [_empty_hypothesis(decoder, 0)]
        return device.beam_search(decoder, enc, ctc_logp, lm, options)
    enc = _encoder(op, enc, 2, decoder)
    T = enc.shape[0]
    x = _ctc_input(op, ctc_logp, options, decoder, (T, decoder.vocab_size))
    if T == 0:
        warnings.warn(f"{op}: enc has no frames; returning an empty hypothesis", stacklevel=2)
        return [_empty_hypothesis(decoder, 0)]
    tau = None if trans_token is None else np.asarray(trans_token)[None]
    prepared = decoder.prepare(enc[None], [T], trans_token=tau)
    scorer = None if x is None else CTCPrefixScore(x, decoder.blank, decoder.eos)
    while True:
        found = _recognize_beam(decoder, prepared, scorer, lm, options)
        if found or options.minlenratio <= 0:
            return found
        options = replace(options, minlenratio=max(0.0, options.minlenratio - 0.1))


def _recognize_beam(decoder: RNNDecoder, prepared: DecoderPrepared, scorer: CTCPrefixScore | None, lm,
                    o: SearchOptions) -> list[Hypothesis]:
    V, eos, beam = decoder.vocab_size, decoder.eos, o.beam_size
    maxlen = _max_length(o.maxlenratio, prepared.frames)
    minlen = int(o.minlenratio * maxlen)
    state = decoder.init_state(prepared, np.zeros(1, np.int64))
    yseq = np.full((1, 1), decoder.sos, np.int64)              # [n, i+1] running hypotheses
    score = np.zeros(1, decoder.dtype)
    lm_state = None
    if scorer is not None:
        ctc_r = scorer.initial_state()[:, :, None]              # [T, 2, n]
        ctc_prev = np.zeros(1, scorer.x.dtype)
        ctc_beam = min(V, int(beam * CTC_SCORING_RATIO)) if o.ctc_weight != 1.0 else V
    ended, alignment, parents = _Ended(), _Alignment(), None
    for i in range(maxlen):
        n = yseq.shape[0]
        last = yseq[:, -1]
        logp, new_state, att = decoder.step(prepared, last, state, np.zeros(n, np.int64))
        alignment.push(att.weights, att.peak, parents)
        local = logp
        if lm is not None:
            lm_new, lm_logp = lm.predict(lm_state, last)
            local = logp + o.lm_weight * lm_logp
        if scorer is None:
            pick = _top_k(local, min(beam, V))                  # [n, k] per parent, best first
            tokens, child = pick, np.take_along_axis(local, pick, axis=1)
        else:
            cand = _top_k(logp, ctc_beam)                       # by the attention score alone
            psi, ctc_r_new = scorer.score(last, i, cand, ctc_r)
            joint = (1.0 - o.ctc_weight) * np.take_along_axis(logp, cand, axis=1) \
                + o.ctc_weight * (psi - ctc_prev[:, None])
            if lm is not None:
                joint = joint + o.lm_weight * np.take_along_axis(lm_logp, cand, axis=1)
            pick = _top_k(joint, min(beam, ctc_beam))
            tokens, child = np.take_along_axis(cand, pick, axis=1), np.take_along_axis(joint, pick, axis=1)
        total = score[:, None] + child
        # ESPnet adds each parent's children to the pool, stably sorts and cuts to beam: the same
        # as one stable sort of all children in (parent, rank) order.
        order = np.argsort(-total, axis=None, kind="stable")[:beam]
        parent, rank = np.divmod(order, total.shape[1])
        yseq = np.concatenate([yseq[parent], tokens[parent, rank][:, None]], axis=1)
        score = total[parent, rank]
        if i == maxlen - 1:
            yseq = np.concatenate([yseq, np.full((yseq.shape[0], 1), eos, np.int64)], axis=1)
        done = yseq[:, -1] == eos
        for m in np.flatnonzero(done):
            if yseq.shape[1] > minlen:
                s = score[m] + (i + 1) * o.penalty
                if lm is not None:
                    s = s + o.lm_weight * lm.final(lm_new, index=int(parent[m]))
                ended.add(s, yseq[m], i, int(parent[m]))
        if o.maxlenratio == 0 and ended.end_detect(i):
            break
        stay = np.flatnonzero(~done)
        if stay.size == 0:
            break
        src = parent[stay]
        state, yseq, score, parents = decoder.select(new_state, src), yseq[stay], score[stay], src
        if lm is not None:
            lm_state = lm.select(lm_new, src)
        if scorer is not None:
            slot = pick[src, rank[stay]]
            ctc_r, ctc_prev = ctc_r_new[:, :, src, slot], psi[src, slot]
    return ended.results(o.nbest, alignment, eos, False, prepared.frames)


# -- a padded batch: recognize_beam_batch --------------------------------------------------------------

def batch_beam_search(decoder: RNNDecoder, enc, lengths, *, ctc_logp=None, lm=None,
                      options: SearchOptions | None = None, normalize_score: bool = True,
                      trans_token=None) -> list[list[Hypothesis]]:
    """ESPnet's ``recognize_beam_batch``: enc ``[B, T, E]``, lengths ``[B]``; ctc_logp
    ``[B, T, V]`` (used when ``options.ctc_weight > 0``); lm: an ``RNNLM``; trans_token ``[B, T]``
    for a GDCAttLoc decoder only.

    Rows ``b * beam + k``, one decoder step per position for all of them, and ESPnet's rules
    (spec 3.5): padded frames zeroed; maxlen from max(lengths) and minlen = floor(minlenratio *
    max(lengths)); attention scores weighted by 1 - ctc_weight; with CTC the blank is excluded and
    the CTC prefix scores (``CTCPrefixScoreBatch``) are computed for the floor(1.5 beam) best
    labels; at step 0 only beam 0 expands; eos never stays in the beam: an eos candidate ends
    its prefix when it beats the beam-th running score and the prefix is at most the utterance's
    length, and the last step ends the running hypotheses; scores of exactly 0 are skipped; end
    detection regardless of maxlenratio; utterances with nothing ended get [sos, eos] with -inf;
    ``normalize_score`` divides by len(yseq) (ESPnet's E2E passes ctc_weight == 0). Returns the
    ``nbest`` best hypotheses per utterance (an empty one, with a warning, for length 0). With
    ``enc`` a CuPy array the search runs on its GPU (attnkit.asr.device), ctc_logp (a CuPy array),
    the CTC window and an RNNLM too.
    """
    op = "batch_beam_search"
    decoder = _check_decoder(op, decoder)
    options = _check_options(op, options)
    lm = _check_lm(op, lm, decoder)
    if is_device_array(enc):
        if trans_token is not None:
            raise UnsupportedError(f"{op}: trans_token (GDCAttLoc) runs on the CPU only so far, got it with a GPU enc "
                                   f"(on the GPU: AttAdd, AttLoc, AttCov, AttCovLoc with CTC and LM scores)")
        return device.batch_beam_search(decoder, enc, lengths, ctc_logp, lm, options, bool(normalize_score))
    enc = _encoder(op, enc, 3, decoder)
    x = _ctc_input(op, ctc_logp, options, decoder, enc.shape[:2] + (decoder.vocab_size,))
    sub, lens, tau, keep = _padded_batch(op, enc, lengths, trans_token)
    results = [[_empty_hypothesis(decoder, 0)] for _ in range(enc.shape[0])]
    if sub is None:
        return results
    prepared = decoder.prepare(sub, lens, trans_token=tau)
    scorer = None
    if x is not None:
        scorer = CTCPrefixScoreBatch(x[keep, :sub.shape[1]], lens, decoder.blank, decoder.eos,
                                     margin=options.ctc_window_margin)
    for j, hyps in zip(keep, _recognize_beam_batch(decoder, prepared, lens, scorer, lm, options,
                                                    bool(normalize_score))):
        results[j] = hyps
    return results


def _recognize_beam_batch(decoder: RNNDecoder, prepared: DecoderPrepared, lengths: np.ndarray,
                          scorer: CTCPrefixScoreBatch | None, lm, o: SearchOptions,
                          normalize: bool) -> list[list[Hypothesis]]:
    V, eos, beam = decoder.vocab_size, decoder.eos, o.beam_size
    B = prepared.batch
    max_hlen = int(lengths.max())
    maxlen = _max_length(o.maxlenratio, max_hlen)
    minlen = int(o.minlenratio * max_hlen)
    att_weight = 1.0 - o.ctc_weight
    # An utterance that has stopped cannot change its results, so its rows leave the step (ESPnet
    # computes them to the end: with 16 short utterances of unequal lengths that was 1.5x the
    # work). Not with the CTC window, whose frame bounds ESPnet takes over all rows.
    drop_stopped = scorer is None or o.ctc_window_margin == 0
    alive = np.arange(B)                                         # the utterances still searched
    rows = np.repeat(alive, beam)                                # row j * beam + k -> utterance alive[j]
    state = decoder.init_state(prepared, rows)
    vscores = np.zeros((B, beam), decoder.dtype)
    yseq = np.full((B * beam, 1), decoder.sos, np.int64)
    lm_state = ctc_state = None
    if scorer is not None:
        scoring_num = min(int(beam * CTC_SCORING_RATIO) if att_weight > 0 else 0, V)
    stop = np.zeros(B, bool)
    ended = [_Ended() for _ in range(B)]
    alignment, parents = _Alignment(), None
    uniform = None  # with the window every row stays to the end (drop_stopped), so U is made once
    if scorer is not None and o.ctc_window_margin > 0:
        uniform = decoder.attention._uniform(prepared.attention, rows)  # the coverage classes' window weights
    for i in range(maxlen):
        n_alive = alive.shape[0]
        base = (np.arange(n_alive) * beam)[:, None]
        last = yseq[:, -1]
        logp, new_state, att = decoder.step(prepared, last, state, rows)
        alignment.push(att.weights, att.peak, parents)
        local = att_weight * logp
        if lm is not None:
            lm_new, lm_logp = lm.buff_predict(lm_state, last, rows.shape[0])
            local = local + o.lm_weight * lm_logp
        if scorer is not None:
            local[:, scorer.blank] = LOGZERO
            part = _top_k(local, scoring_num) if scoring_num > 0 else None
            window = window_weights(att, uniform) if o.ctc_window_margin > 0 else None
            ctc_local, ctc_scores = scorer(last, i, ctc_state, part, window, utterances=rows)
            local = local + o.ctc_weight * ctc_local
        local = local.reshape(n_alive, beam, V)
        if i == 0:
            local[:, 1:] = LOGZERO                               # one copy of the initial hypothesis
        eos_v = local[:, :, eos] + vscores
        cand = vscores[:, :, None] + local
        cand[:, :, eos] = local[:, :, eos] + cand.dtype.type(LOGZERO)  # eos never stays in the beam
        cand = cand.reshape(n_alive, beam * V)
        best_ids = _top_k(cand, beam)                            # [n_alive, beam] into (source beam, label)
        best = np.take_along_axis(cand, best_ids, axis=1)
        src = (best_ids // V + base).reshape(-1)
        label = (best_ids % V).reshape(-1)
        y_prev = yseq
        yseq = np.concatenate([yseq[src], label[:, None]], axis=1)
        vscores = best
        if i >= minlen:
            penalty_i = (i + 1) * o.penalty
            above = eos_v > best[:, -1:]
            live = ~stop[alive][:, None]
            from_eos = above & live & (i + 1 <= lengths[alive][:, None])   # len(y_prev) = i + 1 <= length
            at_end = ~above & live & (i == maxlen - 1)
            for j, k in np.argwhere(from_eos | at_end):
                r = j * beam + k
                if from_eos[j, k]:
                    s, y, row = eos_v[j, k] + penalty_i, y_prev[r], r
                else:
                    s, y, row = best[j, k] + penalty_i, yseq[r], src[r]
                if s == 0:  # ESPnet tests ``if _vscore:``: a score of exactly 0 is dropped
                    continue
                if lm is not None:
                    s = s + o.lm_weight * lm.final(lm_new, index=int(r))
                ended[alive[j]].add(s, np.append(y, eos), i, int(row))
        stop[alive] |= np.array([ended[b].end_detect(i) for b in alive])
        if stop.all():
            break
        # The next step's rows: the selected sources, less the utterances that stopped now.
        keep = ~stop[alive] if drop_stopped else np.ones(n_alive, bool)
        kept_rows = np.flatnonzero(np.repeat(keep, beam))
        state, parents = decoder.select(new_state, src[kept_rows]), src[kept_rows]
        if lm is not None:
            lm_state = lm.select(lm_new, src[kept_rows])
        if scorer is not None:
            ctc_state = scorer.select_rows(ctc_scores, src[kept_rows], label[kept_rows])
        if not keep.all():
            alive, vscores, yseq = alive[keep], vscores[keep], yseq[kept_rows]
            rows = np.repeat(alive, beam)
    return [e.results(o.nbest, alignment, eos, normalize, int(n)) if e.entries else [_empty_hypothesis(decoder, int(n))]
            for e, n in zip(ended, lengths)]
