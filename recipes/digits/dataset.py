"""Feature sets written by make_data.py, cut into padded length-sorted batches."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokens import SOS_EOS_ID, text_to_ids


@dataclass
class Batch:
    feats: torch.Tensor  # [B, L, 80] float32, zero-padded
    lengths: torch.Tensor  # [B] frames
    targets: torch.Tensor  # [B, U] token ids, -1 padded
    target_lengths: torch.Tensor  # [B]
    texts: list[str]
    utt_ids: list[str]

    def decoder_input(self) -> torch.Tensor:
        """[sos] + targets, eos-padded (ESPnet's add_sos_eos): [B, U + 1]."""
        ys_in = torch.cat([torch.full_like(self.targets[:, :1], SOS_EOS_ID), self.targets], dim=1)
        return ys_in.masked_fill(ys_in < 0, SOS_EOS_ID)

    def decoder_target(self) -> torch.Tensor:
        """targets + [eos], -1 padded: [B, U + 1]."""
        ys_out = torch.cat([self.targets, torch.full_like(self.targets[:, :1], -1)], dim=1)
        ys_out[torch.arange(len(ys_out)), self.target_lengths] = SOS_EOS_ID
        return ys_out


class FeatureSet:
    """One feats.npz: utterance n is feats[offsets[n] : offsets[n] + lengths[n]]."""

    def __init__(self, set_dir: Path):
        data = np.load(Path(set_dir) / "feats.npz")
        self.feats = data["feats"]
        self.lengths = data["lengths"]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.utt_ids = [str(u) for u in data["utt_ids"]]
        self.texts = [str(t) for t in data["texts"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices) -> Batch:
        lengths = self.lengths[indices]
        feats = np.zeros((len(indices), lengths.max(), self.feats.shape[1]), dtype=np.float32)
        for row, n in enumerate(indices):
            feats[row, : lengths[row]] = self.feats[self.offsets[n] : self.offsets[n] + lengths[row]]
        token_ids = [text_to_ids(self.texts[n]) for n in indices]
        targets = np.full((len(indices), max(map(len, token_ids))), -1, dtype=np.int64)
        for row, ids in enumerate(token_ids):
            targets[row, : len(ids)] = ids
        return Batch(torch.from_numpy(feats), torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(targets),
                     torch.tensor([len(ids) for ids in token_ids]), [self.texts[n] for n in indices],
                     [self.utt_ids[n] for n in indices])

    def sorted_batches(self, batch_size: int) -> list[np.ndarray]:
        """Index groups of batch_size consecutive utterances in length order (longest first)."""
        order = np.argsort(-self.lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def load_feature_stats(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """ESPnet2 feats_stats.npz (count, sum, sum_square) -> GlobalMVN mean, std [80] (eps 1e-20 as ESPnet)."""
    stats = np.load(path)
    mean = stats["sum"] / stats["count"]
    var = stats["sum_square"] / stats["count"] - mean * mean
    return torch.from_numpy(mean), torch.from_numpy(np.sqrt(np.maximum(var, 1e-20)))
