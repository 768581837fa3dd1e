"""Train the digit recogniser: joint CTC (0.3) + label-smoothed attention cross-entropy (0.7).

Adam 1e-3, held for the first epochs while the attention locks, then decayed per epoch; batches
of 32 utterances sorted by length, visited in a seeded random order; frequency masking; gradient
norm clipped to 5. A checkpoint per epoch, greedy dev CER per epoch in history.json; the best
epoch (lowest attention CER on dev) is the one export.py writes out. Epoch e draws its randomness
from seed + e, so --resume continues exactly as an uninterrupted run would.

    python recipes/digits/train.py --data build/digits --out build/digits/checkpoints
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dataset import FeatureSet, load_feature_stats
from evaluation import set_error_rates
from model import MODEL_CONF, DigitRecogniser, ctc_loss, label_smoothing_loss
from tokens import TOKEN_LIST


def frequency_mask(feats: torch.Tensor, num_masks: int, max_width: int) -> torch.Tensor:
    """SpecAugment frequency masking: per utterance, num_masks bands of 0..max_width bins set to 0
    (the mean, as features are normalised by then).  feats [B, L, F]."""
    batch, _, bins = feats.shape
    keep = torch.ones(batch, 1, bins)
    for row in range(batch):
        for _ in range(num_masks):
            width = int(torch.randint(0, max_width + 1, ()))
            start = int(torch.randint(0, bins - width + 1, ()))
            keep[row, 0, start : start + width] = 0.0
    return feats * keep


def learning_rate(args, epoch: int) -> float:
    return args.lr * args.lr_decay ** max(0, epoch - args.decay_from_epoch)


def train_epoch(model, optimizer, train_set: FeatureSet, args, epoch: int) -> dict[str, float]:
    model.train()
    torch.manual_seed(args.seed + epoch)
    batches = train_set.sorted_batches(args.batch_size)
    order = np.random.default_rng(args.seed + epoch).permutation(len(batches))
    totals = {"loss": 0.0, "ctc": 0.0, "att": 0.0}
    start = time.time()
    for step, b in enumerate(order, start=1):
        batch = train_set.batch(batches[b])
        enc, enc_lengths = model.encode(batch.feats, batch.lengths,
                                        augment=lambda x: frequency_mask(x, args.freq_masks, args.freq_mask_width))
        loss_ctc = ctc_loss(model.ctc.log_probs(enc), enc_lengths, batch.targets.clamp(min=0), batch.target_lengths)
        logits = model.decoder(enc, enc_lengths, batch.decoder_input())
        loss_att = label_smoothing_loss(logits, batch.decoder_target(), MODEL_CONF["lsm_weight"])
        loss = MODEL_CONF["ctc_weight"] * loss_ctc + (1.0 - MODEL_CONF["ctc_weight"]) * loss_att
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        for key, value in (("loss", loss), ("ctc", loss_ctc), ("att", loss_att)):
            totals[key] += value.item()
        if step % args.log_every == 0 or step == len(order):
            print(f"epoch {epoch} step {step}/{len(order)} loss {totals['loss'] / step:.2f} "
                  f"(ctc {totals['ctc'] / step:.2f}, att {totals['att'] / step:.2f}) {time.time() - start:.0f} s", flush=True)
    return {key: value / len(order) for key, value in totals.items()} | {"train_seconds": time.time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("build/digits"))
    parser.add_argument("--out", type=Path, default=Path("build/digits/checkpoints"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay", type=float, default=0.7, help="per-epoch factor after --decay-from-epoch")
    parser.add_argument("--decay-from-epoch", type=int, default=3)
    parser.add_argument("--grad-clip", type=float, default=5.0)
    parser.add_argument("--freq-masks", type=int, default=2)
    parser.add_argument("--freq-mask-width", type=int, default=12)
    parser.add_argument("--stop-cer", type=float, default=0.5, help="stop once dev attention CER (%%) is below this")
    parser.add_argument("--seed", type=int, default=1)
    # 1 thread: on this 2-core machine shared with other jobs (load 4-7), a training step took
    # 0.85 s with 1 thread and 7.1 s with 2 (the second OpenMP thread is mostly descheduled).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, dev_set = FeatureSet(args.data / "train"), FeatureSet(args.data / "dev")
    mean, std = load_feature_stats(args.data / "train" / "feats_stats.npz")
    model = DigitRecogniser(len(TOKEN_LIST), train_set.feats.shape[1], mean, std)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{sum(p.numel() for p in model.parameters())} parameters, {len(train_set)} train, {len(dev_set)} dev", flush=True)

    history_path = args.out / "history.json"
    history = {"epochs": [], "best_epoch": None, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.resume and history_path.exists():
        history = json.loads(history_path.read_text())
        last = history["epochs"][-1]["epoch"]
        checkpoint = torch.load(args.out / f"epoch{last}.pth")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    first_epoch = len(history["epochs"]) + 1

    for epoch in range(first_epoch, args.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, epoch)
        record = {"epoch": epoch, "lr": learning_rate(args, epoch)} | train_epoch(model, optimizer, train_set, args, epoch)
        rates, _ = set_error_rates(model, dev_set)
        record |= {"dev_cer_attention": rates["attention"], "dev_cer_ctc": rates["ctc"]}
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                   args.out / f"epoch{epoch}.pth")
        history["epochs"].append(record)
        history["best_epoch"] = min(history["epochs"], key=lambda r: r["dev_cer_attention"])["epoch"]
        history_path.write_text(json.dumps(history, indent=1))
        print(f"epoch {epoch}: dev CER attention {rates['attention']:.2f}% ctc {rates['ctc']:.2f}% "
              f"(best epoch {history['best_epoch']})", flush=True)
        if rates["attention"] < args.stop_cer:
            break


if __name__ == "__main__":
    main()
