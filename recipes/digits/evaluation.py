"""Greedy decoding of a feature set and its character error rate."""

import torch

from dataset import FeatureSet
from model import DigitRecogniser
from tokens import BLANK_ID, ids_to_text

MAX_OUTPUT_TOKENS = 64  # the longest transcript (7 words) has 41 characters


def edit_distance(reference: str, hypothesis: str) -> int:
    """Levenshtein distance between two character strings (one row of the DP table at a time)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_char in enumerate(reference, start=1):
        current = [i]
        for j, hyp_char in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_char != hyp_char)))
        previous = current
    return previous[-1]


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Total edits / total reference characters (spaces count), in percent."""
    edits = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
    return 100.0 * edits / sum(len(r) for r in references)


def ctc_greedy(log_probs: torch.Tensor, enc_lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(dim=-1)
    hypotheses = []
    for path, length in zip(best.tolist(), enc_lengths.tolist()):
        merged = [t for k, t in enumerate(path[:length]) if k == 0 or t != path[k - 1]]
        hypotheses.append([t for t in merged if t != BLANK_ID])
    return hypotheses


@torch.no_grad()
def decode_set(model: DigitRecogniser, feature_set: FeatureSet, batch_size: int = 64) -> dict[str, dict[str, str]]:
    """{"attention": {utt_id: text}, "ctc": {utt_id: text}} with greedy decoding of both branches."""
    model.eval()
    results = {"attention": {}, "ctc": {}}
    for indices in feature_set.sorted_batches(batch_size):
        batch = feature_set.batch(indices)
        enc, enc_lengths = model.encode(batch.feats, batch.lengths)
        attention = model.decoder.greedy(enc, enc_lengths, MAX_OUTPUT_TOKENS)
        ctc = ctc_greedy(model.ctc.log_probs(enc), enc_lengths)
        for utt_id, att_ids, ctc_ids in zip(batch.utt_ids, attention, ctc):
            results["attention"][utt_id] = ids_to_text(att_ids)
            results["ctc"][utt_id] = ids_to_text(ctc_ids)
    return results


def set_error_rates(model: DigitRecogniser, feature_set: FeatureSet) -> tuple[dict[str, float], dict[str, dict[str, str]]]:
    """CER (%) of both greedy decoders on a set, and the hypotheses."""
    hypotheses = decode_set(model, feature_set)
    references = dict(zip(feature_set.utt_ids, feature_set.texts))
    rates = {
        branch: character_error_rate([references[u] for u in hyps], list(hyps.values()))
        for branch, hyps in hypotheses.items()
    }
    return rates, hypotheses
