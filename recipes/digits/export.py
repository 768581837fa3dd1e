"""Export the best training epoch as an ESPnet2-style experiment directory and score it.

Writes <exp>/config.yaml, <exp>/model.pth (torch.save of the whole model's state_dict, ESPnet2
ESPnetASRModel names), <exp>/feats_stats.npz (the GlobalMVN statistics), and the greedy CER of
both decoders on dev and on the unseen-voices eval set (<exp>/results.json, per base voice and per
variant, plus the hypotheses in <exp>/eval_hypotheses.txt).

    python recipes/digits/export.py --data build/digits --checkpoints build/digits/checkpoints --exp build/digits/exp
"""

import argparse
import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from dataset import FeatureSet, load_feature_stats
from evaluation import character_error_rate, set_error_rates
from features import FEATURE_CONFIG
from model import DECODER_CONF, ENCODER_CONF, MODEL_CONF, DigitRecogniser
from tokens import TOKEN_LIST


def experiment_config(input_size: int) -> dict:
    """ESPnet2 asr config keys for a model on pre-extracted features, plus attnkit_features."""
    return {
        "token_type": "char",
        "token_list": list(TOKEN_LIST),
        "frontend": None,
        "input_size": input_size,
        "specaug": "specaug",
        "specaug_conf": {"apply_time_warp": False, "apply_freq_mask": True, "freq_mask_width_range": [0, 12],
                         "num_freq_mask": 2, "apply_time_mask": False},
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": "feats_stats.npz"},
        "encoder": "rnn",
        "encoder_conf": dict(ENCODER_CONF),
        "decoder": "rnn",
        "decoder_conf": dict(DECODER_CONF),
        "model_conf": dict(MODEL_CONF),
        "attnkit_features": dict(FEATURE_CONFIG),
    }


def breakdown(hypotheses: dict[str, str], metadata_path: Path, key: str) -> dict[str, float]:
    """CER (%) per value of a utterances.tsv column (voice, variant)."""
    groups = defaultdict(lambda: ([], []))
    with open(metadata_path) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            references, hyps = groups[row[key]]
            references.append(row["text"])
            hyps.append(hypotheses[row["utt_id"]])
    return {value: round(character_error_rate(*pair), 2) for value, pair in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("build/digits"))
    parser.add_argument("--checkpoints", type=Path, default=Path("build/digits/checkpoints"))
    parser.add_argument("--exp", type=Path, default=Path("build/digits/exp"))
    parser.add_argument("--epoch", type=int, default=None, help="default: the best epoch in history.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    history = json.loads((args.checkpoints / "history.json").read_text())
    epoch = args.epoch or history["best_epoch"]
    eval_set, dev_set = FeatureSet(args.data / "eval"), FeatureSet(args.data / "dev")
    stats_path = args.data / "train" / "feats_stats.npz"
    model = DigitRecogniser(len(TOKEN_LIST), eval_set.feats.shape[1], *load_feature_stats(stats_path))
    model.load_state_dict(torch.load(args.checkpoints / f"epoch{epoch}.pth")["model"])
    model.eval()

    args.exp.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.exp / "model.pth")
    shutil.copyfile(stats_path, args.exp / "feats_stats.npz")
    with open(args.exp / "config.yaml", "w") as f:
        yaml.safe_dump(experiment_config(eval_set.feats.shape[1]), f, sort_keys=False)

    dev_rates, _ = set_error_rates(model, dev_set)
    eval_rates, hypotheses = set_error_rates(model, eval_set)
    metadata = args.data / "eval" / "utterances.tsv"
    results = {
        "epoch": epoch,
        "dev_cer": dev_rates,
        "eval_cer": eval_rates,
        "eval_cer_attention_by_voice": breakdown(hypotheses["attention"], metadata, "voice"),
        "eval_cer_attention_by_variant": breakdown(hypotheses["attention"], metadata, "variant"),
    }
    (args.exp / "results.json").write_text(json.dumps(results, indent=1))
    with open(args.exp / "eval_hypotheses.txt", "w") as f:
        f.writelines(f"{utt_id} {text}\n" for utt_id, text in sorted(hypotheses["attention"].items()))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
