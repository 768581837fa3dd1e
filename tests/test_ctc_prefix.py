"""attnkit.asr.ctc_prefix against a brute-force sum over all CTC alignments, and against ESPnet.

The prefix probability of a label sequence h is the total probability of the alignments (one label
or blank per frame) whose collapsed output starts with h; for the eos candidate it is the
probability that the output is exactly the prefix. With T = 5 frames and O = 4 labels there are
4^5 alignments: small enough to enumerate.
"""
import itertools

import numpy as np
import pytest

from attnkit import UnsupportedError
from attnkit.asr.ctc_prefix import LOGZERO, CTCPrefixScore, CTCPrefixScoreBatch, prefix_scores

BLANK = 0


def log_posteriors(rng, T, O, sharp=1.5):
    z = rng.standard_normal((T, O)) * sharp
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def collapse(path):
    out, prev = [], None
    for p in path:
        if p != prev and p != BLANK:
            out.append(p)
        prev = p
    return tuple(out)


def alignment_probs(x):
    """{collapsed output: probability} over all alignments of the T frames of x [T, O]."""
    T, O = x.shape
    probs = {}
    for path in itertools.product(range(O), repeat=T):
        p = np.exp(sum(x[t, s] for t, s in enumerate(path)))
        key = collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


def prefix_prob(probs, h):
    return sum(p for seq, p in probs.items() if seq[:len(h)] == tuple(h))


def forward_vars(x, h):
    """Brute-force r^n_t(h), r^b_t(h) [T, 2] (probabilities): frames 0..t collapse to h and frame
    t holds a label (n) or a blank (b)."""
    T, O = x.shape
    r = np.zeros((T, 2))
    for t in range(T):
        for path in itertools.product(range(O), repeat=t + 1):
            if collapse(path) == tuple(h):
                r[t, 0 if path[-1] != BLANK else 1] += np.exp(sum(x[s, p] for s, p in enumerate(path)))
    return r


def expected_psi(probs, g, cands, eos):
    out = []
    for c in cands:
        if c == eos:
            out.append(probs.get(tuple(g), 0.0))
        elif c == BLANK:
            out.append(0.0)
        else:
            out.append(prefix_prob(probs, list(g) + [c]))
    return np.array(out)


def to_prob(log_x):
    return np.where(np.asarray(log_x) <= LOGZERO / 2, 0.0, np.exp(log_x))


@pytest.mark.parametrize("prefix", [(), (2,), (2, 2), (1, 3, 1)])
def test_single_hypothesis_scores_and_states_equal_brute_force(prefix):
    rng = np.random.default_rng(len(prefix))
    T, O = 5, 4
    eos = O - 1
    x = log_posteriors(rng, T, O)
    probs = alignment_probs(x)
    scorer = CTCPrefixScore(x, BLANK, eos, state_dtype=np.float64)
    # Walk the prefix label by label, feeding each chosen candidate's state to the next call.
    y, r = [eos], scorer.initial_state()
    np.testing.assert_allclose(to_prob(r), forward_vars(x, ()), atol=1e-12)
    for label in prefix:
        psi, states = scorer(y, np.arange(O), r)
        y, r = y + [label], states[label]
        np.testing.assert_allclose(to_prob(r), forward_vars(x, y[1:]), atol=1e-12, err_msg=f"r of {y[1:]}")
    cands = np.arange(O)
    psi, states = scorer(y, cands, r)
    np.testing.assert_allclose(to_prob(psi), expected_psi(probs, prefix, cands, eos), atol=1e-12, rtol=1e-9)
    assert psi[BLANK] == LOGZERO


def test_float32_state_is_espnet_default_and_close():
    rng = np.random.default_rng(7)
    x = log_posteriors(rng, 6, 5)
    exact = CTCPrefixScore(x, BLANK, 4, state_dtype=np.float64)
    espnet_like = CTCPrefixScore(x, BLANK, 4)
    assert espnet_like.initial_state().dtype == np.float32
    psi64, _ = exact([4, 2], [1, 2, 3, 4], exact(([4]), [2], exact.initial_state())[1][0])
    psi32, _ = espnet_like([4, 2], [1, 2, 3, 4], espnet_like([4], [2], espnet_like.initial_state())[1][0])
    np.testing.assert_allclose(psi32, psi64, rtol=1e-6)


def test_vectorised_hypotheses_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    T, O = 7, 6
    x = log_posteriors(rng, T, O)
    scorer = CTCPrefixScore(x, BLANK, O - 1, state_dtype=np.float64)
    r0 = scorer.initial_state()
    _, first = scorer([O - 1], np.arange(O), r0)
    prefixes = [[O - 1, 2], [O - 1, 3], [O - 1, 2]]
    states = np.stack([first[2], first[3], first[2]], axis=2)             # [T, 2, N]
    cands = np.array([[1, 2, 5], [3, 4, 0], [2, 2, 1]])
    psi, r = scorer.score(np.array([2, 3, 2]), 1, cands, states)
    for n, (y, c) in enumerate(zip(prefixes, cands)):
        psi1, r1 = scorer(y, c, states[:, :, n])
        np.testing.assert_allclose(psi[n], psi1, rtol=1e-13)
        np.testing.assert_allclose(r[:, :, n].transpose(2, 0, 1), r1, rtol=1e-13)


def test_batch_scorer_equals_brute_force_with_padding_and_candidates():
    rng = np.random.default_rng(11)
    B, T, O, W = 2, 5, 4, 2
    eos = O - 1
    lengths = np.array([5, 3])
    x = np.stack([log_posteriors(rng, T, O) for _ in range(B)])
    x[1, 3:] = 9.0                                                       # garbage past the length
    probs = [alignment_probs(x[b, :lengths[b]]) for b in range(B)]
    scorer = CTCPrefixScoreBatch(x, lengths, BLANK, eos)
    sos = np.full(B * W, eos)
    inc, pending = scorer(sos, 0, None)
    for n in range(B * W):
        want = expected_psi(probs[n // W], (), range(O), eos)
        np.testing.assert_allclose(to_prob(inc[n]), want, atol=1e-12, rtol=1e-9)
    # Keep labels 1 and 2 for utterance 0 (both from beam 0) and 2 (twice, beams 0 and 1) for 1.
    best_ids = np.array([[1, 2], [2, O + 2]])
    state = scorer.select_state(pending, best_ids)
    prefixes = [(1,), (2,), (2,), (2,)]
    last = np.array([1, 2, 2, 2])
    scoring_ids = np.array([[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]])
    inc, pending = scorer(last, 1, state, scoring_ids)
    for n in range(B * W):
        got = inc[n] + state.s[n]
        want = expected_psi(probs[n // W], prefixes[n], range(O), eos)
        scored = np.isin(np.arange(O), np.append(scoring_ids[n], eos))
        np.testing.assert_allclose(to_prob(got[scored]), want[scored], atol=1e-12, rtol=1e-9)
        assert np.all(got[~scored] == LOGZERO)
    assert np.array_equal(pending.slot[0, [1, 2, 3]], [0, 1, 2]) and pending.slot[0, 0] == -1


def test_batch_window_wide_margin_matches_no_window():
    rng = np.random.default_rng(5)
    B, T, O, W = 1, 8, 5, 2
    x = np.stack([log_posteriors(rng, T, O)])
    plain = CTCPrefixScoreBatch(x, [T], BLANK, O - 1)
    windowed = CTCPrefixScoreBatch(x, [T], BLANK, O - 1, margin=T)
    att = rng.dirichlet(np.ones(T), size=B * W)
    s1 = s2 = None
    last = np.full(B * W, O - 1)
    for i, labels in enumerate([[1, 2], [3, 3]]):
        inc1, p1 = plain(last, i, s1, None, att)
        inc2, p2 = windowed(last, i, s2, None, att)
        np.testing.assert_allclose(inc2, inc1, rtol=1e-9, atol=1e-9)
        best = np.array([[labels[0], labels[1]]])
        s1, s2 = plain.select_state(p1, best), windowed.select_state(p2, best)
        last = np.array(labels)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="blank"):
        CTCPrefixScore(np.zeros((3, 4)), 4, 3)
    with pytest.raises(TypeError, match="x"):
        CTCPrefixScore([[0.0]], 0, 0)
    with pytest.raises(ValueError, match="lengths"):
        CTCPrefixScoreBatch(np.zeros((2, 3, 4)), [3, 4], 0, 3)
    with pytest.raises(ValueError, match="margin"):
        CTCPrefixScoreBatch(np.zeros((1, 3, 4)), [3], 0, 3, margin=-1)
    x, label_col, blank_col, r_sum, r_blank, repeat = recursion_inputs(np.random.default_rng(0), 4, 1, 2, M=3)
    with pytest.raises(UnsupportedError, match="window .* for GPU arrays"):
        prefix_scores(x, label_col, blank_col, r_sum, r_blank, repeat, True, 1, 4, np.float64,
                      window=np.array([1, 4]))


# -- ESPnet's own scorers ------------------------------------------------------------------------------

def test_matches_espnet_scorers():
    torch = pytest.importorskip("torch")
    ctc_mod = pytest.importorskip("espnet.nets.ctc_prefix_score")
    rng = np.random.default_rng(2)
    B, T, O, W = 2, 9, 6, 3
    eos = O - 1
    lengths = [9, 6]
    x = np.stack([log_posteriors(rng, T, O) for _ in range(B)])
    # Batched scorer, with pre-selected candidates and the attention window, over three steps.
    for margin in (0, 2):
        ours = CTCPrefixScoreBatch(x, lengths, BLANK, eos, margin=margin)
        theirs = ctc_mod.CTCPrefixScoreTH(torch.from_numpy(x.copy()), torch.tensor(lengths), BLANK, eos, margin)
        y = [[eos] for _ in range(B * W)]
        st, st_t = None, None
        for i in range(3):
            ids = np.stack([rng.permutation(np.arange(1, O))[:3] for _ in range(B * W)])
            att = rng.dirichlet(np.ones(T), size=B * W)
            inc, pend = ours(np.array([s[-1] for s in y]), i, st, ids, att)
            inc_t, pend_t = theirs(y, st_t, torch.from_numpy(ids), torch.from_numpy(att))
            np.testing.assert_allclose(inc, inc_t.numpy(), rtol=1e-12, atol=1e-6)
            best = np.stack([rng.choice(W * O, W, replace=False) for _ in range(B)])
            best[:, 0] = ids[::W, 0]                                       # one scored label per utterance
            st, st_t = ours.select_state(pend, best), theirs.index_select_state(pend_t, torch.from_numpy(best))
            src = (best // O + (np.arange(B) * W)[:, None]).reshape(-1)
            y = [y[s] + [int(lab)] for s, lab in zip(src, (best % O).reshape(-1))]
    # Single-utterance numpy scorer, its float32 state included.
    single, theirs1 = CTCPrefixScore(x[0], BLANK, eos), ctc_mod.CTCPrefixScore(x[0], BLANK, eos, np)
    r, r_t, y = single.initial_state(), theirs1.initial_state(), [eos]
    np.testing.assert_array_equal(r, r_t)
    for label in (2, 2, 4):
        cs = np.arange(O)
        psi, states = single(y, cs, r)
        psi_t, states_t = theirs1(y, cs, r_t)
        np.testing.assert_allclose(psi, psi_t, rtol=1e-13)
        r, r_t, y = states[label], states_t[label], y + [label]


def recursion_reference(xs, x_blank, log_phi, first_label, start, end):
    """The prefix-score recursion (module docstring of attnkit.asr.ctc_prefix) in float64, frame by
    frame with math.log/exp per element, on the gathered inputs xs [T, N, C], x_blank [T, N] and
    log_phi [T, N, C]: r [T, 2, N, C] and psi [N, C]."""
    import math

    def lae(a, b):
        if a == b:
            return a + math.log(2.0)
        m, d = max(a, b), -abs(a - b)
        return m + math.log1p(math.exp(d))

    T, N, C = xs.shape
    r = np.full((T, 2, N, C), LOGZERO)
    if first_label:
        r[0, 0] = xs[0]
    psi = np.full((N, C), LOGZERO)
    if start > T:
        return r, psi
    for n in range(N):
        for c in range(C):
            terms = [r[start - 1, 0, n, c]]
            for t in range(start, end):
                r[t, 0, n, c] = lae(r[t - 1, 0, n, c], log_phi[t - 1, n, c]) + xs[t, n, c]
                r[t, 1, n, c] = lae(r[t - 1, 0, n, c], r[t - 1, 1, n, c]) + x_blank[t, n]
                terms.append(log_phi[t - 1, n, c] + xs[t, n, c])
            m = max(terms)
            with np.errstate(invalid="ignore"):
                psi[n, c] = m + math.log(sum(math.exp(v - m) for v in terms))
    return r, psi


def recursion_inputs(rng, T, N, C, M):
    """x [T, M] log-posteriors, each prefix's candidate columns and blank column, the prefixes'
    r_sum and r_blank [T, N], and which candidates repeat the last label; r_blank of prefix 0
    holds log(0) on its first frames."""
    x = np.log(rng.dirichlet(np.ones(M), size=T))
    label_col = np.stack([rng.choice(M, C, replace=C > M) for _ in range(N)]).astype(np.int64)
    blank_col = rng.integers(0, M, N)
    r_blank = np.cumsum(np.log(rng.uniform(0.2, 0.9, (T, N))), axis=0)
    r_blank[: T // 2, 0] = LOGZERO
    r_sum = np.logaddexp(r_blank, np.cumsum(np.log(rng.uniform(0.2, 0.9, (T, N))), axis=0))
    repeat = rng.random((N, C)) < 0.3
    return x, label_col, blank_col, r_sum, r_blank, repeat


def gathered(x, label_col, blank_col, r_sum, r_blank, repeat):
    """(xs [T, N, C], x_blank [T, N], log_phi [T, N, C]) as the recursion reads them."""
    return x[:, label_col], x[:, blank_col], np.where(repeat[None], r_blank[:, :, None], r_sum[:, :, None])


# Candidate counts around the vector widths (4, 8, 16 lanes) and the kernel's blocks of 4 vectors.
@pytest.mark.parametrize("T,N,C", [(1, 1, 1), (2, 3, 5), (7, 2, 8), (9, 1, 17), (33, 2, 33), (12, 3, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recursion_kernel_matches_float64_reference_on_every_isa(isa, T, N, C, dtype):
    rng = np.random.default_rng(T * 100 + C)
    args = recursion_inputs(rng, T, N, C, M=C + 7)
    cast = [a.astype(dtype) if a.dtype.kind == "f" else a for a in args]
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    ranges = [(1, T), (min(2, T), T), (1, max(1, T // 2)), (max(1, T - 1), 1), (T + 1, T)]
    for first_label in (True, False):
        for start, end in ranges:
            r, psi = prefix_scores(*cast, first_label, start, end, dtype)
            want = recursion_reference(*gathered(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in cast]),
                                       first_label, start, end)
            assert r.dtype == dtype and psi.dtype == dtype
            np.testing.assert_allclose(r, want[0], rtol=rtol, atol=rtol, err_msg=f"{first_label} {start} {end}")
            np.testing.assert_allclose(psi, want[1], rtol=rtol, atol=rtol, err_msg=f"{first_label} {start} {end}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_frames_give_logzero_scores(dtype):
    """T = 0: no frame for any candidate; psi is log(0), as from the NumPy recursion (start > T),
    not whatever memory the output was given."""
    x, label_col, blank_col, r_sum, r_blank, repeat = recursion_inputs(np.random.default_rng(0), 3, 2, 5, M=8)
    args = (x[:0].astype(dtype), label_col, blank_col, r_sum[:0].astype(dtype), r_blank[:0].astype(dtype), repeat)
    for _ in range(3):  # (fresh outputs: earlier scores would show through unwritten memory)
        r, psi = prefix_scores(*args, True, 1, 0, dtype)
        assert r.shape == (0, 2, 2, 5) and psi.dtype == dtype
        np.testing.assert_array_equal(psi, np.full((2, 5), LOGZERO, dtype))


def test_recursion_kernel_propagates_nan_and_infinities():
    from attnkit.asr.ctc_prefix import prefix_scores

    T, N, C, M = 6, 1, 11, 12
    x = np.full((T, M), -1.0)
    x[3, 1] = np.nan
    x[2, 2] = -np.inf
    x[2, 3] = np.inf
    label_col = np.arange(C, dtype=np.int64)[None]
    blank_col = np.array([M - 1])
    r_sum = np.full((T, N), -2.0)
    r_blank = np.full((T, N), -np.inf)
    repeat = np.zeros((N, C), bool)
    repeat[0, 4] = True  # phi = r^b = -inf
    for dtype in (np.float32, np.float64):
        args = (x.astype(dtype), label_col, blank_col, r_sum.astype(dtype), r_blank.astype(dtype), repeat)
        r, psi = prefix_scores(*args, True, 1, T, dtype)
        r_ref, psi_ref = recursion_reference(*gathered(x, label_col, blank_col, r_sum, r_blank, repeat), True, 1, T)
        np.testing.assert_array_equal(np.isnan(r), np.isnan(r_ref))
        np.testing.assert_array_equal(np.isnan(psi), np.isnan(psi_ref))
        assert np.isnan(psi[0, 1]) and np.isnan(psi[0, 3])  # an inf term: inf - inf in logsumexp, as NumPy
        np.testing.assert_allclose(r, r_ref, rtol=2e-6)
        np.testing.assert_allclose(psi, psi_ref, rtol=2e-6)


def test_mixed_dtypes_take_the_numpy_recursion_with_espnet_rounding():
    """float64 log-posteriors with float32 states (ESPnet's CTCPrefixScore under a float64 model):
    the frame loop in NumPy, each r rounded to float32 after adding x in float64."""
    from attnkit.asr.ctc_prefix import prefix_scores

    rng = np.random.default_rng(5)
    x, label_col, blank_col, r_sum, r_blank, repeat = recursion_inputs(rng, 9, 2, 5, M=8)
    r, psi = prefix_scores(x, label_col, blank_col, r_sum.astype(np.float32), r_blank.astype(np.float32), repeat,
                           False, 1, 9, np.float32)
    assert r.dtype == np.float32 and psi.dtype == np.float64
    want = recursion_reference(*gathered(x, label_col, blank_col, r_sum.astype(np.float32).astype(np.float64),
                                         r_blank.astype(np.float32).astype(np.float64), repeat), False, 1, 9)
    np.testing.assert_allclose(r, want[0], rtol=1e-6)
    np.testing.assert_allclose(psi, want[1], rtol=1e-6)


def test_recursion_kernel_rejects_bad_arguments():
    from attnkit import _core

    T, N, C, M = 4, 1, 3, 5
    x = np.zeros((T, M), np.float32)
    cols, blank = np.zeros((N, C), np.int64), np.zeros(N, np.int64)
    rows, repeat = np.zeros((T, N), np.float32), np.zeros((N, C), bool)
    r, psi = np.empty((T, 2, N, C), np.float32), np.empty((N, C), np.float32)
    call = lambda **kw: _core.ctc_prefix_scores(  # noqa: E731
        *[kw.get(k, v) for k, v in (("x", x), ("label_col", cols), ("blank_col", blank), ("r_sum", rows),
                                    ("r_blank", rows), ("repeat", repeat))],
        False, kw.get("start", 1), kw.get("end", T), LOGZERO, r, psi)
    with pytest.raises(ValueError, match="start must be >= 1"):
        call(start=0)
    with pytest.raises(ValueError, match="end must be <= T=4"):
        call(end=5)
    with pytest.raises(ValueError, match=r"label_col must lie in \[0, M=5\), got 5 at 2"):
        call(label_col=np.array([[0, 1, 5]]))
    with pytest.raises(ValueError, match=r"blank_col must lie in \[0, M=5\), got -1"):
        call(blank_col=np.array([-1]))
    with pytest.raises(ValueError, match=r"r_sum must be .* shape \(4, 1\)"):
        call(r_sum=np.zeros((T, 2), np.float32))
    with pytest.raises(ValueError, match=r"repeat must be .* of bool dtype and shape \(1, 3\), got int64"):
        call(repeat=np.zeros((N, C), np.int64))
