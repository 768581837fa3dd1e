"""ESPnet's CTC prefix scores (Watanabe et al. 2017, Algorithm 2), vectorised over hypotheses and
candidate labels, without torch.

Spec: /work/shared/spec/espnet_attention.md, sections 3.4 (``CTCPrefixScore``, the single-utterance
search) and 3.5 (``CTCPrefixScoreTH``, the batched search). For a prefix g (sos excluded, length
|g|) and a candidate c, with x ``[T, O]`` the CTC log-posteriors and r^n, r^b ``[T]`` the
log-probabilities that g ends at frame t with a label or a blank:

    phi_t   = logaddexp(r^n_t(g), r^b_t(g)),  or r^b_t(g) when c is g's last label
    r^n_t(gc) = logaddexp(r^n_{t-1}(gc), phi_{t-1}) + x_t(c)
    r^b_t(gc) = logaddexp(r^n_{t-1}(gc), r^b_{t-1}(gc)) + x_t(blank)
    psi(gc) = logsumexp(r^n_{s-1}(gc), phi_{t-1} + x_t(c) for s <= t < end),   s = max(|g|, 1)
    psi(g eos) = logaddexp(r^n_{T-1}(g), r^b_{T-1}(g));  psi(g blank) = LOGZERO

with r^n_0(c) = x_0(c) for the first label and LOGZERO elsewhere. Both classes share that
recursion (``prefix_scores``: one C++ call per step, src/cpp/cpu/ctc_prefix.cc, or for CuPy arrays
one CUDA launch, src/cuda/ctc_prefix.cu); they differ in what ESPnet's two implementations do
around it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, is_device_array, lengths_array
from attnkit._core import UnsupportedError
from attnkit._cuda import GpuCall

#: ESPnet's log(0).
LOGZERO = -1e10


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def prefix_scores(x, label_col, blank_col, r_sum, r_blank, repeat, first_label: bool, start: int, end: int,
                  state_dtype, window=None) -> tuple[np.ndarray, np.ndarray]:
    """The recursion above for N prefixes x C candidates at once.

    x ``[T, M]`` log-posteriors, a column per (utterance, label); label_col ``[N, C]`` int64 the
    column of each candidate, blank_col ``[N]`` that of each prefix's blank; r_sum ``[T, N]``
    logaddexp(r^n, r^b) and r_blank ``[T, N]`` r^b of the prefixes; repeat ``[N, C]`` bool, where
    phi is r^b (the candidate repeats the prefix's last label) instead of r_sum; first_label:
    |g| == 0; frames [start, end) are updated (ESPnet: start = max(|g|, 1), end = T, or the
    attention window). Returns r ``[T, 2, N, C]`` (state_dtype; frames outside the range LOGZERO)
    and psi ``[N, C]`` (eos and blank not yet applied). With x, r_sum and r_blank of the state's
    dtype the C++ kernel gathers its inputs itself (no [T, N, C] copies); CuPy arrays (one dtype,
    then also the state's) give CuPy arrays, computed on their device; for those, window (a ``[2]``
    int64 device array) may hold (start, end) in place of the host's, clamped to 1 <= start,
    end <= T (the CTC window, computed on the device).
    """
    if is_device_array(x):
        return _prefix_scores_device(x, label_col, blank_col, r_sum, r_blank, repeat, first_label, start, end,
                                     window)
    if window is not None:
        raise UnsupportedError(f"prefix_scores: window (device-held bounds) is for GPU arrays; on the CPU pass start "
                               f"and end, got {describe(window)}")
    T, (N, C) = x.shape[0], label_col.shape
    dtype = np.dtype(state_dtype)
    if dtype in (np.float32, np.float64) and x.dtype == r_sum.dtype == r_blank.dtype == dtype:
        # One dtype throughout (every search but ESPnet's float32 states under a float64 model):
        # the C++ kernel, the same recursion without a NumPy call per frame.
        r, psi = np.empty((T, 2, N, C), dtype), np.empty((N, C), dtype)
        _core.ctc_prefix_scores(*(np.ascontiguousarray(a) for a in (x, label_col, blank_col, r_sum, r_blank)),
                                np.ascontiguousarray(repeat, bool), bool(first_label), int(start), int(end), LOGZERO,
                                r, psi)
        return r, psi
    xs = x[:, label_col]                                                   # [T, N, C]
    log_phi = np.where(repeat[None], r_blank[:, :, None], r_sum[:, :, None])
    r = np.full((T, 2, N, C), LOGZERO, dtype=state_dtype)
    if first_label:
        r[0, 0] = xs[0]
    if start > T:  # a prefix longer than the input: no frame left for c
        return r, np.full((N, C), LOGZERO, dtype=np.result_type(log_phi, xs))
    x_b = x[:, blank_col][:, :, None]
    for t in range(start, end):
        # Written to r in its dtype after adding x in x's dtype: ESPnet's rounding points.
        np.add(np.logaddexp(r[t - 1, 0], log_phi[t - 1]), xs[t], out=r[t, 0], casting="same_kind")
        np.add(np.logaddexp(r[t - 1, 0], r[t - 1, 1]), x_b[t], out=r[t, 1], casting="same_kind")
    terms = log_phi[start - 1:end - 1] + xs[start:end]                   # [end-start, N, C]
    terms = np.concatenate([terms, r[start - 1, 0][None].astype(terms.dtype)], axis=0)
    return r, logsumexp(terms, axis=0)


def _prefix_scores_device(x, label_col, blank_col, r_sum, r_blank, repeat, first_label: bool, start: int, end: int,
                          window):
    """``prefix_scores`` on GPU arrays (src/cuda/ctc_prefix.cu), on the caller's stream."""
    arrays = {"x": x, "label_col": label_col, "blank_col": blank_col, "r_sum": r_sum, "r_blank": r_blank,
              "repeat": repeat}
    call = GpuCall("ctc_prefix_scores", arrays if window is None else {**arrays, "window": window})
    T, (N, C) = x.shape[0], label_col.shape
    lib = call.lib
    with call:
        r, psi = lib.empty((T, 2, N, C), x), lib.empty((N, C), x)
        args = (x, lib.as_int64(label_col), lib.as_int64(blank_col), r_sum, r_blank, repeat.astype(bool))
        _core.ctc_prefix_scores_cuda(*(call.capsule(lib.contiguous(a)) for a in args), bool(first_label), int(start),
                                     int(end), LOGZERO, call.capsule(r), call.capsule(psi),
                                     None if window is None else call.capsule(lib.contiguous(lib.as_int64(window))),
                                     call.stream)
    return r, psi


class CTCPrefixScore:
    """ESPnet's numpy ``CTCPrefixScore`` for one utterance (used by ``recognize_beam``).

    x ``[T, O]`` CTC log-posteriors of one utterance (no padding); blank and eos ids. As ESPnet,
    the forward variables r are stored in float32 whatever x's dtype (``state_dtype``; pass
    x.dtype for full float64), and a state is r ``[T, 2]`` (r^n, r^b) per hypothesis.
    ``score`` runs several hypotheses of the same length at once. A CuPy x computes on its
    device (labels and states are then arrays of that device), with states in x's dtype.
    """

    def __init__(self, x, blank: int, eos: int, *, state_dtype=np.float32):
        op = "CTCPrefixScore"
        if is_device_array(x):
            call = GpuCall(op, {"x": x})
            self.xp = getattr(call.lib, "xp", None)
            if self.xp is None:
                raise UnsupportedError(f"{op}: x must be a CuPy array on the GPU, got a {call.lib.name} array")
            if x.ndim != 2 or x.dtype.kind != "f":
                raise ValueError(f"{op}: x must be a 2-D float array [T, O], got {describe(x)}")
            if np.dtype(state_dtype) != x.dtype:
                raise UnsupportedError(f"{op}: on the GPU the states take x's dtype {x.dtype}, got state_dtype "
                                       f"{np.dtype(state_dtype)} (ESPnet's float32 states under float64 "
                                       f"log-posteriors run on the CPU)")
            self.x = x
        else:
            self.xp = np
            self.x = host_float_array(op, "x", x, (2,))
        T, O = self.x.shape
        for name, v in (("blank", blank), ("eos", eos)):
            if not isinstance(v, (int, np.integer)) or not 0 <= v < O:
                raise ValueError(f"{op}: {name} must be a label id in [0, {O}), got {describe(v)}")
        self.blank, self.eos = int(blank), int(eos)
        self.input_length, self.odim = T, O
        self.state_dtype = np.dtype(state_dtype)

    def initial_state(self) -> np.ndarray:
        """r ``[T, 2]`` of the empty prefix: r^n = LOGZERO, r^b_t = sum_{s<=t} x_s(blank),
        accumulated in the state dtype frame by frame, as ESPnet."""
        xp = self.xp
        r = xp.full((self.input_length, 2), LOGZERO, dtype=self.state_dtype)
        if xp is not np:  # a running sum in the state dtype (its order is the library's)
            r[:, 1] = xp.cumsum(self.x[:, self.blank].astype(self.state_dtype))
            return r
        r[0, 1] = self.x[0, self.blank]
        for t in range(1, self.input_length):
            r[t, 1] = r[t - 1, 1] + self.x[t, self.blank]
        return r

    def score(self, last, output_length: int, candidates, r_prev) -> tuple[np.ndarray, np.ndarray]:
        """Prefix scores of N hypotheses of equal length extended by C candidates each.

        last ``[N]`` the hypotheses' last labels (sos for the empty prefix); output_length = |g|;
        candidates ``[N, C]`` label ids; r_prev ``[T, 2, N]`` their states. Returns psi ``[N, C]``
        and the candidates' states r ``[T, 2, N, C]``.
        """
        xp = self.xp
        cands = xp.asarray(candidates).astype(np.int64, copy=False)
        last = xp.asarray(last)
        r_prev = xp.asarray(r_prev).astype(self.state_dtype, copy=False)
        r_sum = xp.logaddexp(r_prev[:, 0], r_prev[:, 1])                      # [T, N]
        repeat = (cands == last[:, None]) & (output_length > 0)  # the empty prefix keeps r_sum
        r, psi = prefix_scores(self.x, cands, xp.full(cands.shape[0], self.blank, dtype=np.int64), r_sum,
                               r_prev[:, 1], repeat, output_length == 0, max(output_length, 1), self.input_length,
                               self.state_dtype)
        psi = xp.where(cands == self.eos, r_sum[-1][:, None], psi)
        if self.eos != self.blank:
            psi = xp.where(cands == self.blank, psi.dtype.type(LOGZERO), psi)
        return psi, r

    def __call__(self, y, cs, r_prev) -> tuple[np.ndarray, np.ndarray]:
        """ESPnet's call: prefix ``y`` (sos first), candidates ``cs [C]``, state ``r_prev [T, 2]``;
        returns psi ``[C]`` and the candidates' states ``[C, T, 2]``."""
        cs = np.asarray(cs)
        psi, r = self.score(np.array([y[-1]]), len(y) - 1, cs[None], np.asarray(r_prev)[:, :, None])
        return psi[0], np.ascontiguousarray(r[:, :, 0].transpose(2, 0, 1))


class CTCBatchState(NamedTuple):
    """``CTCPrefixScoreBatch``'s state after selection: r ``[T, 2, N]``, the selected prefix
    scores s ``[N, 1]``, and the window's running frame bounds (ints; 0-d arrays on the GPU)."""

    r: np.ndarray
    s: np.ndarray
    f_min: int
    f_max: int


class CTCBatchScores(NamedTuple):
    """What a ``CTCPrefixScoreBatch`` call leaves for ``select_state``: r ``[T, 2, N, S]`` of the
    scored candidates, psi ``[N, O]``, the window bounds, and the label -> candidate slot map
    ``[N, O]`` (-1: not scored; None when all O labels were scored)."""

    r: np.ndarray
    psi: np.ndarray
    f_min: int
    f_max: int
    slot: np.ndarray | None


class CTCPrefixScoreBatch:
    """ESPnet's ``CTCPrefixScoreTH`` (the batched search's scorer), on NumPy or CuPy arrays.

    x ``[B, T, O]`` CTC log-posteriors (copied; frames past each length become LOGZERO with blank
    0, as ESPnet does in place), lengths ``[B]`` (host); rows are ``n = b * W + k`` (W hypotheses
    per utterance). Computes in x's dtype, on x's device when x is a CuPy array (the recursion in
    src/cuda/ctc_prefix.cu; the labels, states and row maps passed in are then arrays of that
    device too). ``margin > 0`` restricts the frames to a window around the attention's expected
    frames (ESPnet's ``ctc_window_margin``); on the GPU its bounds stay on the device, where ESPnet
    reads them back every step.
    """

    def __init__(self, x, lengths, blank: int, eos: int, margin: int = 0):
        op = "CTCPrefixScoreBatch"
        if is_device_array(x):
            call = GpuCall(op, {"x": x})
            xp = getattr(call.lib, "xp", None)
            if xp is None:
                raise UnsupportedError(f"{op}: x must be a CuPy array on the GPU, got a {call.lib.name} array")
            if x.ndim != 3 or x.dtype.kind != "f":
                raise ValueError(f"{op}: x must be a 3-D float array [B, T, O], got {describe(x)}")
        else:
            xp = np
            x = host_float_array(op, "x", x, (3,))
        B, T, O = x.shape
        lengths = lengths_array(op, "lengths", lengths, B, T, "T")
        for name, v in (("blank", blank), ("eos", eos)):
            if not isinstance(v, (int, np.integer)) or not 0 <= v < O:
                raise ValueError(f"{op}: {name} must be a label id in [0, {O}), got {describe(v)}")
        if not isinstance(margin, (int, np.integer)) or margin < 0:
            raise ValueError(f"{op}: margin must be an integer >= 0, got {describe(margin)}")
        self.xp = xp
        self.blank, self.eos, self.margin = int(blank), int(eos), int(margin)
        self.batch, self.input_length, self.odim = B, T, O
        self.dtype = x.dtype
        past = xp.asarray(np.arange(T)[:, None] >= lengths[None, :])        # [T, B]
        x_tbo = xp.where(past[:, :, None], self.dtype.type(LOGZERO), x.transpose(1, 0, 2))  # [T, B, O], a copy
        x_tbo[:, :, self.blank] = xp.where(past, self.dtype.type(0), x_tbo[:, :, self.blank])
        self.x = x_tbo
        self.end_frames = xp.asarray(lengths - 1)

    def initial_state(self) -> None:
        return None

    def _initial(self, utt) -> CTCBatchState:
        xp = self.xp
        r = xp.full((self.input_length, 2, utt.shape[0]), LOGZERO, dtype=self.dtype)
        # torch's CPU cumsum accumulates float32 in double: so does this, on the GPU too.
        r[:, 1] = xp.cumsum(self.x[:, :, self.blank], axis=0, dtype=np.float64)[:, utt].astype(self.dtype)
        return CTCBatchState(r, xp.zeros((utt.shape[0], 1), self.dtype), 0, 1)

    def __call__(self, last, output_length: int, state: CTCBatchState | None, scoring_ids=None,
                 att_w=None, utterances=None) -> tuple[np.ndarray, CTCBatchScores]:
        """Scores every row's candidates.

        last ``[N]`` each row's last label (sos first); output_length = |g| (equal for all rows);
        state: None first, then ``select_state``'s; scoring_ids ``[N, S]`` the labels to score
        (the others get LOGZERO), None for all O; att_w ``[N, ..., T]`` this step's attention
        weights (for the window); utterances ``[N]`` the utterance of each row (default: rows
        ``b * W + k`` over all B utterances; the batched search passes fewer once some utterances
        have stopped). Returns the increments psi - s ``[N, O]`` and the scores to hand to
        ``select_state``.
        """
        xp = self.xp
        last = xp.asarray(last)
        n = last.shape[0]
        every = xp.arange(n)
        utt = every // (n // self.batch) if utterances is None else xp.asarray(utterances)
        if state is None:
            state = self._initial(utt)
        r_prev, s_prev, f_min_prev, f_max_prev = state
        T, O = self.input_length, self.odim
        if scoring_ids is None:
            cands, slot = xp.broadcast_to(xp.arange(O), (n, O)), None
        else:
            cands = xp.asarray(scoring_ids)
            slot = xp.full((n, O), -1, dtype=np.int64)
            slot[every[:, None], cands] = xp.arange(cands.shape[1])
        r_sum = xp.logaddexp(r_prev[:, 0], r_prev[:, 1])                       # [T, N]
        # ESPnet replaces phi by r^b for the last label even for the empty prefix (last = sos).
        repeat = cands == last[:, None]

        window = None
        if att_w is not None and self.margin > 0:
            f_min, f_max, start, end, window = self._window(att_w, output_length, f_min_prev, f_max_prev)
        else:
            f_min = f_max = 0
            start, end = max(output_length, 1), T
        # x's columns are (utterance, label) pairs: the kernel gathers each lane's from them.
        r, psi_c = prefix_scores(self.x.reshape(T, -1), utt[:, None] * O + cands, utt * O + self.blank, r_sum,
                                 r_prev[:, 1], repeat, output_length == 0, start, end, self.dtype, window)
        if slot is None:
            psi = psi_c.astype(self.dtype, copy=False)
        else:
            psi = xp.full((n, O), LOGZERO, dtype=self.dtype)
            psi[every[:, None], cands] = psi_c
        psi[:, self.eos] = r_sum[self.end_frames[utt], every]
        if self.eos != self.blank:
            psi[:, self.blank] = LOGZERO
        return psi - s_prev, CTCBatchScores(r, psi, f_min, f_max, slot)

    def _window(self, att_w, output_length: int, f_min_prev, f_max_prev):
        """ESPnet's window: the frames [start, end) around the expected frames f = att_w @ (0, 1, ...,
        T - 1) of every row (truncated to integers), never moving back. Returns (f_min, f_max, start,
        end, window): host ints and window None on the CPU; on the GPU f_min and f_max are 0-d device
        arrays and window the ``[2]`` device array (start, end) that the kernel reads (start and end
        are then placeholders), so nothing is read back."""
        xp, T, margin = self.xp, self.input_length, self.margin
        first = max(output_length, 1)
        if xp is np:
            f_arg = np.asarray(att_w) @ np.arange(T, dtype=self.dtype)
            f_min = max(int(f_arg.min()), f_min_prev)
            f_max = max(int(f_arg.max()), f_max_prev)
            return f_min, f_max, min(f_max_prev, max(f_min - margin, first)), min(f_max + margin, T), None
        f_arg = att_w @ xp.arange(T, dtype=self.dtype)
        f_min = xp.maximum(f_arg.min().astype(np.int64), f_min_prev)
        f_max = xp.maximum(f_arg.max().astype(np.int64), f_max_prev)
        window = xp.stack([xp.minimum(f_max_prev, xp.maximum(f_min - margin, first)), xp.minimum(f_max + margin, T)])
        return f_min, f_max, first, T, window

    def select_state(self, scores: CTCBatchScores, best_ids) -> CTCBatchState:
        """The states of the kept candidates: best_ids ``[B, W]`` indices into each utterance's
        (W x O) candidates (``source hypothesis * O + label``), as the batched search picks them.
        A label that was not scored takes slot 0's r (its score is LOGZERO-ish anyway), as ESPnet."""
        xp = self.xp
        best_ids = xp.asarray(best_ids)
        B, W = best_ids.shape
        n = scores.psi.shape[0]
        hyps = n // B
        src = (best_ids // self.odim + (xp.arange(B) * hyps)[:, None]).reshape(-1)
        return self.select_rows(scores, src, (best_ids % self.odim).reshape(-1))

    def select_rows(self, scores: CTCBatchScores, src, label) -> CTCBatchState:
        """The states of rows ``src [M]`` extended by ``label [M]`` (``select_state`` with the
        source rows spelt out)."""
        s_new = scores.psi[src, label][:, None]
        col = label if scores.slot is None else self.xp.maximum(scores.slot[src, label], 0)
        return CTCBatchState(scores.r[:, :, src, col], s_new, scores.f_min, scores.f_max)
