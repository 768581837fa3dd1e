"""One step of the batched CTC prefix scorer (ESPnet's ``CTCPrefixScoreTH``, the scorer of
``recognize_beam_batch``) on the backends: attnkit (``CTCPrefixScoreBatch``, on NumPy or CuPy
arrays), the same step in NumPy with the recursion frame by frame (how ESPnet's numpy
``CTCPrefixScore`` runs it), and ESPnet's own ``CTCPrefixScoreTH`` on PyTorch tensors (CPU or
CUDA; needs espnet).

Every backend builds its scorer and takes its first step (the empty prefixes, then the beam's
selection) outside the timing; the timed call is the second step: N prefixes of one label, each
scoring its S candidate labels over the T frames. Used by `attnkit bench --ops ctc-prefix`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from attnkit.asr.ctc_prefix import LOGZERO, CTCPrefixScoreBatch

if TYPE_CHECKING:
    from attnkit.bench.cases import CtcPrefixCase

BLANK = 0


def make_inputs(case: "CtcPrefixCase", rng: np.random.Generator) -> dict:
    """{"x" [U, T, O] log-posteriors, "lengths" [U], "ids0" / "ids1" [N, S] the candidates of the
    two steps (S distinct non-blank labels per row), "best0" [U, W] the first step's selection
    (indices into each utterance's W x O candidates, among the scored ones of beam 0, as the
    search at step 0 expands beam 0 only)}. eos = O - 1 (ESPnet's sos/eos)."""
    U, W, T, O, S = case.utterances, case.hyps, case.T, case.vocab, case.scored
    z = 2 * rng.standard_normal((U, T, O))
    x = (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(case.dtype)
    ids = [np.stack([1 + rng.permutation(O - 1)[:S] for _ in range(U * W)]) for _ in range(2)]
    best0 = np.stack([rng.choice(ids[0][u * W], W, replace=False) for u in range(U)])  # beam 0's labels
    return {"x": x, "lengths": case.utterance_lengths(), "ids0": ids[0], "ids1": ids[1], "best0": best0}


def _last_labels(c: dict, O: int) -> np.ndarray:
    return (c["best0"] % O).reshape(-1)


def attnkit_calls(case: "CtcPrefixCase", copies: list[dict], xp=None) -> list[Callable[[], object]]:
    """attnkit's scorer; with ``xp`` (CuPy) on the GPU, every input copied there first."""
    up = (lambda a: a) if xp is None else xp.asarray
    calls = []
    for c in copies:
        scorer = CTCPrefixScoreBatch(up(c["x"]), c["lengths"], BLANK, case.vocab - 1)
        sos = up(np.full(case.N, case.vocab - 1, np.int64))
        _, scores = scorer(sos, 0, None, up(c["ids0"]))
        state = scorer.select_state(scores, up(c["best0"]))
        last, ids = up(_last_labels(c, case.vocab)), up(c["ids1"])
        calls.append(lambda scorer=scorer, last=last, state=state, ids=ids: scorer(last, 1, state, ids))
    return calls


def numpy_step(x_tbo, end_frames, r_prev, s_prev, last, ids, output_length):
    """The scorer's step with NumPy calls, the recursion one frame at a time: the increments
    psi - s ``[N, O]`` (the blank and eos columns as ESPnet sets them)."""
    T, U, O = x_tbo.shape
    N = last.shape[0]
    utt = np.arange(N) // (N // U)
    xs = x_tbo[:, utt[:, None], ids]                                            # [T, N, S]
    x_blank = x_tbo[:, utt, BLANK][:, :, None]
    r_sum = np.logaddexp(r_prev[:, 0], r_prev[:, 1])                           # [T, N]
    log_phi = np.where((ids == last[:, None])[None], r_prev[:, 1, :, None], r_sum[:, :, None])
    r = np.full((T, 2) + xs.shape[1:], LOGZERO, x_tbo.dtype)
    start = max(output_length, 1)
    for t in range(start, T):
        r[t, 0] = np.logaddexp(r[t - 1, 0], log_phi[t - 1]) + xs[t]
        r[t, 1] = np.logaddexp(r[t - 1, 0], r[t - 1, 1]) + x_blank[t]
    terms = np.concatenate([log_phi[start - 1:T - 1] + xs[start:], r[start - 1, 0][None]])
    m = terms.max(0)
    psi = np.full((N, O), LOGZERO, x_tbo.dtype)
    psi[np.arange(N)[:, None], ids] = m + np.log(np.exp(terms - m).sum(0))
    psi[:, O - 1] = r_sum[end_frames[utt], np.arange(N)]
    psi[:, BLANK] = LOGZERO
    return psi - s_prev


def numpy_calls(case: "CtcPrefixCase", copies: list[dict]) -> list[Callable[[], object]]:
    """The NumPy step on the state attnkit's scorer reaches after the first step (the same r)."""
    calls = []
    for c in copies:
        scorer = CTCPrefixScoreBatch(c["x"], c["lengths"], BLANK, case.vocab - 1)
        _, scores = scorer(np.full(case.N, case.vocab - 1), 0, None, c["ids0"])
        state = scorer.select_state(scores, c["best0"])
        last = _last_labels(c, case.vocab)
        calls.append(lambda c=c, state=state, last=last, x=scorer.x, ends=c["lengths"] - 1:
                     numpy_step(x, ends, state.r, state.s, last, c["ids1"], 1))
    return calls


def torch_calls(torch, case: "CtcPrefixCase", copies: list[dict], device: str = "cpu") -> list[Callable[[], object]]:
    """ESPnet's ``CTCPrefixScoreTH`` (espnet/nets/ctc_prefix_score.py) on `device`."""
    from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH

    calls = []
    sos = case.vocab - 1
    for c in copies:
        x = torch.from_numpy(c["x"].copy()).to(device)  # the scorer masks its input in place
        scorer = CTCPrefixScoreTH(x, torch.from_numpy(c["lengths"]).to(device), BLANK, sos)
        ids0, ids1 = (torch.from_numpy(c[k]).to(device) for k in ("ids0", "ids1"))
        _, scores = scorer([[sos]] * case.N, None, ids0)
        state = scorer.index_select_state(scores, torch.from_numpy(c["best0"]).to(device))
        y = [[sos, int(t)] for t in _last_labels(c, case.vocab)]
        calls.append(lambda scorer=scorer, y=y, state=state, ids=ids1: scorer(y, state, ids))
    return calls
