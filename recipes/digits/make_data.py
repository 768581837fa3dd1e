"""Synthesise the digit-string corpus with espeak-ng and write its fbank features.

Sets (each a fixed seed, so a rerun writes the same data):
  train  8000 utterances: all 8 base voices x 79 training variants, speed/pitch outside the held-out cells;
  dev     400 utterances: all 8 base voices x 6 variants held out of training (used to pick the epoch);
  eval    500 utterances: all 8 base voices x 16 other held-out variants x held-out speed/pitch cells,
          also written as 16 kHz WAVs + transcripts.txt for `attnkit evaluate`.
Six short eval-condition utterances become the package's sample WAVs.

espeak-ng (GPL) is only called as a program.

    python recipes/digits/make_data.py --out build/digits --samples python/attnkit/data/samples
"""

import argparse
import csv
import os
import re
import subprocess
import tempfile
import time
from dataclasses import astuple, dataclass, fields
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile
import soxr

from features import SAMPLE_RATE, fbank
from tokens import DIGIT_WORDS, WORD_TO_DIGIT

BASE_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")

# Held-out variants, drawn once at random per family (numpy default_rng(6): 1 of f1-f5, 2 of m1-m8,
# 1 klatt, 1 robosoft, 1 whisper, 10 named for eval; 6 more for dev) from espeak-ng 1.51's 101
# variants, and fixed here so the split does not move with the installed espeak-ng.
EVAL_VARIANTS = ("anika", "croak", "Demonic", "Denis", "f3", "Henrique", "klatt4", "linda", "m5", "m8",
                 "Michael", "robosoft3", "steph", "Tweaky", "victor", "whisper")
DEV_VARIANTS = ("Andy", "f5", "john", "klatt", "m3", "robosoft4")

# Speed (words/min) x pitch (0-99) grid of 5 x 5 cells; the eval set uses only the held-out cells,
# one per speed row and one per pitch column, so training still covers every speed and every pitch.
SPEED_RANGE, PITCH_RANGE, GRID = (120, 220), (20, 80), 5
HELD_OUT_CELLS = frozenset({(0, 2), (1, 4), (2, 0), (3, 3), (4, 1)})  # (speed cell, pitch cell)

MAX_WORDS = 7
SAMPLE_TEXTS = ("four oh seven one", "nine two", "three eight five", "six zero one", "two five nine eight",
                "seven three six")

SET_SEEDS = {"train": 1, "dev": 2, "eval": 3, "samples": 4}
ESPEAK_ATTEMPTS = 8  # sleeping 1, 2, 4, ... 128 s after each failure


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    voice: str
    variant: str
    speed: int
    pitch: int
    text: str


def espeak_variants() -> list[str]:
    """Variant file names espeak-ng knows (an unknown one silently falls back to the base voice)."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True)
    return sorted(line.split()[4].removeprefix("!v/") for line in listing.stdout.splitlines()[1:])


def espeak_languages() -> set[str]:
    """Language names of `espeak-ng --voices`, with the aliases of its last column ("(en 2)")."""
    listing = subprocess.run(["espeak-ng", "--voices"], check=True, capture_output=True, text=True).stdout
    rows = listing.splitlines()[1:]
    return {row.split()[1] for row in rows} | set(re.findall(r"\((\S+) \d+\)", listing))


def training_variants(known: list[str]) -> list[str]:
    missing = sorted(set(EVAL_VARIANTS + DEV_VARIANTS) - set(known))
    if missing:
        raise ValueError(f"make_data: held-out variants must be known to espeak-ng, missing {missing}")
    unknown_voices = sorted(set(BASE_VOICES) - espeak_languages())
    if unknown_voices:
        raise ValueError(f"make_data: base voices must be known to espeak-ng, missing {unknown_voices}")
    return [v for v in known if v not in EVAL_VARIANTS and v not in DEV_VARIANTS]


def grid_cell(value: int, value_range: tuple[int, int]) -> int:
    low, high = value_range
    return min(GRID - 1, (value - low) * GRID // (high - low))


def draw_speed_pitch(rng: np.random.Generator, held_out: bool) -> tuple[int, int]:
    """Uniform over the held-out cells (held_out) or over the other cells, by rejection."""
    while True:
        speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        cell = (grid_cell(speed, SPEED_RANGE), grid_cell(pitch, PITCH_RANGE))
        if (cell in HELD_OUT_CELLS) == held_out:
            return speed, pitch


def draw_text(rng: np.random.Generator) -> str:
    num_words = int(rng.integers(1, MAX_WORDS + 1))
    return " ".join(DIGIT_WORDS[i] for i in rng.integers(0, len(DIGIT_WORDS), num_words))


def draw_set(name: str, size: int, variants, held_out_cells: bool, texts=None) -> list[Utterance]:
    """Base voices cycle so each is equally represented; variant, speed, pitch, text are random."""
    rng = np.random.default_rng(SET_SEEDS[name])
    utterances = []
    for i in range(size):
        variant = variants[int(rng.integers(len(variants)))]
        speed, pitch = draw_speed_pitch(rng, held_out_cells)
        text = texts[i] if texts else draw_text(rng)
        utterances.append(Utterance(f"{name}_{i:05d}", BASE_VOICES[i % len(BASE_VOICES)], variant, speed, pitch, text))
    return utterances


def synthesise(utterance: Utterance) -> np.ndarray:
    """espeak-ng -> 22.05 kHz int16 WAV -> [S] int16 at 16 kHz (soxr), as a 16-bit file would hold it."""
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "tts.wav")
        command = ["espeak-ng", "-v", f"{utterance.voice}+{utterance.variant}", "-s", str(utterance.speed),
                   "-p", str(utterance.pitch), "-w", wav_path, utterance.text]
        # espeak-ng aborts (fifo_init assertion) when it cannot start its audio thread, e.g. while
        # the machine is short of threads; its output is deterministic, so a retry is safe.
        for attempt in range(ESPEAK_ATTEMPTS):
            if subprocess.run(command, capture_output=True).returncode == 0:
                break
            time.sleep(2.0 ** attempt)
        else:
            raise RuntimeError(f"make_data: espeak-ng failed {ESPEAK_ATTEMPTS} times: {' '.join(command)}")
        audio, rate = soundfile.read(wav_path, dtype="float32")
    resampled = soxr.resample(audio, rate, SAMPLE_RATE)
    return np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16)


def synthesise_with_features(utterance: Utterance) -> tuple[np.ndarray, np.ndarray]:
    samples = synthesise(utterance)
    return samples, fbank(samples)


def write_metadata(utterances: list[Utterance], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow([field.name for field in fields(Utterance)])
        writer.writerows(astuple(u) for u in utterances)


def write_set(utterances: list[Utterance], set_dir: Path, pool: Pool, keep_wavs: bool) -> None:
    """feats.npz: feats [sum(frames), 80] float32 with lengths [N] (utterance n is rows
    offsets[n]:offsets[n]+lengths[n], offsets = cumsum), utt_ids, texts; utterances.tsv: conditions."""
    set_dir.mkdir(parents=True, exist_ok=True)
    if keep_wavs:
        (set_dir / "wav").mkdir(exist_ok=True)
    features = []
    for utterance, (samples, feats) in zip(utterances, pool.imap(synthesise_with_features, utterances, chunksize=16)):
        features.append(feats)
        if keep_wavs:
            soundfile.write(set_dir / "wav" / f"{utterance.utt_id}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
    np.savez(set_dir / "feats.npz",
             feats=np.concatenate(features), lengths=np.array([len(f) for f in features], dtype=np.int64),
             utt_ids=np.array([u.utt_id for u in utterances]), texts=np.array([u.text for u in utterances]))
    write_metadata(utterances, set_dir / "utterances.tsv")
    if keep_wavs:
        with open(set_dir / "transcripts.txt", "w") as f:
            f.writelines(f"{u.utt_id} {u.text}\n" for u in utterances)


def write_feature_stats(set_dir: Path) -> None:
    """ESPnet2 collect_stats format (count, sum [80], sum_square [80]) for GlobalMVN."""
    feats = np.load(set_dir / "feats.npz")["feats"].astype(np.float64)
    np.savez(set_dir / "feats_stats.npz", count=np.array(len(feats)), sum=feats.sum(0), sum_square=(feats ** 2).sum(0))


def write_samples(utterances: list[Utterance], samples_dir: Path, conditions_path: Path) -> None:
    """sample<k>_<digits>.wav (16 kHz 16-bit mono) + transcripts.txt of 'file text' lines; the
    voices they were made with go to conditions_path (outside the package)."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, utterance in enumerate(utterances, start=1):
        digits = "".join(WORD_TO_DIGIT[word] for word in utterance.text.split())
        file_name = f"sample{k}_{digits}.wav"
        soundfile.write(samples_dir / file_name, synthesise(utterance), SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{file_name} {utterance.text}\n")
    (samples_dir / "transcripts.txt").write_text("".join(lines))
    write_metadata(utterances, conditions_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/digits"))
    parser.add_argument("--samples", type=Path, default=None, help="folder for the six sample WAVs (skipped if not given)")
    parser.add_argument("--num-train", type=int, default=8000)
    parser.add_argument("--num-dev", type=int, default=400)
    parser.add_argument("--num-eval", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2, help="synthesis processes (this machine: at most 2)")
    args = parser.parse_args()

    train_variants = training_variants(espeak_variants())
    sets = {
        "train": draw_set("train", args.num_train, train_variants, held_out_cells=False),
        "dev": draw_set("dev", args.num_dev, DEV_VARIANTS, held_out_cells=False),
        "eval": draw_set("eval", args.num_eval, EVAL_VARIANTS, held_out_cells=True),
    }
    print(f"{len(train_variants)} training variants, {len(DEV_VARIANTS)} dev, {len(EVAL_VARIANTS)} eval", flush=True)
    with Pool(args.jobs) as pool:
        for name, utterances in sets.items():
            start = time.time()
            write_set(utterances, args.out / name, pool, keep_wavs=name == "eval")
            print(f"{name}: {len(utterances)} utterances in {time.time() - start:.0f} s", flush=True)
    write_feature_stats(args.out / "train")
    if args.samples is not None:
        write_samples(draw_set("samples", len(SAMPLE_TEXTS), EVAL_VARIANTS, held_out_cells=True, texts=SAMPLE_TEXTS),
                      args.samples, args.out / "samples.tsv")


if __name__ == "__main__":
    main()
