"""Reading audio for recognition: any file libsndfile reads (WAV, FLAC, OGG, ...), any sample rate,
mono or multi-channel, as float32 mono at the model's rate.

soundfile (libsndfile) reads, soxr resamples (the SoX resampler, high quality); nothing here is
hand-written DSP. Every failure is an ``AudioError`` naming the file, so a command can report it
and go on with the next file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """An audio file that cannot be read or is not usable speech (names the file)."""


def load_audio(path, sample_rate: int) -> np.ndarray:
    """The file at ``path`` as float32 samples in [-1, 1] ``[S]`` at ``sample_rate``: channels
    averaged (downmix), resampled if the file's rate differs."""
    import soundfile
    import soxr

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors (corrupt header, unknown format) come as several types
        raise AudioError(f"{path}: not a readable audio file ({e})") from e
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: the samples contain NaN or infinity")
    if rate != sample_rate and mono.shape[0] > 0:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return mono
