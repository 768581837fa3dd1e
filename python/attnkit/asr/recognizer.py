"""From audio to text: features, encoder, and a search, for one file at a time.

``Recognizer()`` loads the bundled digit recogniser (``attnkit/models/digits``); any model
directory written by ``attnkit convert-espnet`` or ``AsrModel.save`` works the same way.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnkit._core import UnsupportedError
from attnkit.asr.audio import load_audio
from attnkit.asr.features import FeatureExtractor
from attnkit.asr.model import AsrModel
from attnkit.asr.search import SearchOptions, beam_search, greedy_search

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = PACKAGE_DIR / "models" / "digits"
BUNDLED_SAMPLES = PACKAGE_DIR / "data" / "samples"

_SPACE = "<space>"


def gpu_array_module():
    """CuPy, once it is known that attnkit's CUDA part is built and a GPU is there."""
    from attnkit import _core

    op = "Recognizer(device='cuda')"
    if not _core.cuda_built():
        raise UnsupportedError(f"{op}: this attnkit was built without CUDA (no nvcc at install time)")
    try:
        import cupy
    except ImportError as e:
        raise UnsupportedError(f"{op}: needs CuPy: pip install 'attnkit[cuda]'") from e
    count, why = _core.cuda_device_count()
    if count == 0:
        raise UnsupportedError(f"{op}: needs a GPU, found none ({why})")
    return cupy


def bundled_samples() -> list[Path]:
    """The sample recordings shipped with attnkit (digit strings in voices the model never heard)."""
    return sorted(BUNDLED_SAMPLES.glob("*.wav"))


def tokens_to_text(tokens: list[str]) -> str:
    """ESPnet2 character tokens to text: ``<space>`` is a space, other ``<...>`` symbols vanish."""
    return "".join(" " if t == _SPACE else t for t in tokens if t == _SPACE or not (t.startswith("<") and t.endswith(">")))


@dataclass
class Transcript:
    """One recognised utterance.

    text; tokens (the model's token strings) and token_ids; score (the search's log-probability
    score); peaks ``[S]``: the attention's argmax encoder frame of each decoder step (the last step
    emits eos), peak_seconds: the same as times in the audio; weights ``[S, T']`` (multi-head
    ``[S, H, T']``): the decoded hypothesis' attention; features ``[T, F]``: the filterbank;
    audio_seconds; seconds: compute time (features, encoder, search); rtf = seconds / audio_seconds.
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    score: float
    peaks: np.ndarray
    peak_seconds: np.ndarray
    weights: np.ndarray
    features: np.ndarray
    audio_seconds: float
    seconds: float

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds > 0 else float("nan")

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "score": self.score,
            "peak_frames": self.peaks.tolist(),
            "peak_seconds": [round(float(s), 3) for s in self.peak_seconds],
            "audio_seconds": round(self.audio_seconds, 3),
            "seconds": round(self.seconds, 4),
            "rtf": round(self.rtf, 4),
        }


class Recognizer:
    """Transcribes audio with an attnkit ASR model.

    model: a model directory or an ``AsrModel`` (default: the bundled digit recogniser). beam 1
    without CTC is greedy search; otherwise ESPnet's ``recognize_beam`` with ``ctc_weight`` (joint
    CTC/attention scoring when the model has a CTC branch), ``penalty``, ``maxlenratio``,
    ``minlenratio``.

    device ``"cuda"``: the encoder and the search run on the current CuPy device (features and the
    result stay on the host), with the same search rules. Needs CuPy, attnkit's CUDA part and a GPU;
    joint CTC decoding there needs a float32 model (ESPnet's float32 CTC states).
    """

    def __init__(self, model=None, *, beam: int = 1, ctc_weight: float = 0.0, penalty: float = 0.0,
                 maxlenratio: float = 0.0, minlenratio: float = 0.0, device: str = "cpu"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"Recognizer: device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self._xp = gpu_array_module() if device == "cuda" else None
        if model is None:
            model = BUNDLED_MODEL
        self.model = model if isinstance(model, AsrModel) else AsrModel.load(model)
        if ctc_weight > 0 and not self.model.has_ctc:
            raise ValueError(f"Recognizer: ctc_weight must be 0 for a model without a CTC branch, got {ctc_weight}")
        self.options = SearchOptions(beam_size=beam, ctc_weight=ctc_weight, penalty=penalty,
                                     maxlenratio=maxlenratio, minlenratio=minlenratio)
        self.features = FeatureExtractor(self.model.config.features)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def transcribe_file(self, path) -> Transcript:
        """Reads ``path`` (any rate, any channel count; AudioError if unreadable) and transcribes it."""
        start = time.perf_counter()
        samples = load_audio(path, self.sample_rate)
        return self._transcribe(samples, start, str(path))

    def transcribe(self, samples) -> Transcript:
        """samples: float32 mono ``[S]`` in [-1, 1] at ``sample_rate``."""
        start = time.perf_counter()
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1 or not np.all(np.isfinite(samples)):
            raise ValueError(f"Recognizer.transcribe: samples must be a 1-D array of finite values (mono audio at "
                             f"{self.sample_rate} Hz), got shape {samples.shape}"
                             + ("" if samples.ndim != 1 else " with NaN or infinity"))
        return self._transcribe(samples, start, "samples")

    def _transcribe(self, samples: np.ndarray, start: float, what: str) -> Transcript:
        feats = self.features(samples)
        audio_seconds = samples.shape[0] / self.sample_rate
        if feats.shape[0] < self.model.encoder.min_length():
            warnings.warn(f"{what}: {audio_seconds:.3f} s of audio is too short for this model ({feats.shape[0]} "
                          f"feature frames, the encoder needs {self.model.encoder.min_length()}); empty transcript",
                          stacklevel=3)
            return Transcript(text="", tokens=[], token_ids=[], score=0.0, peaks=np.zeros(0, np.int64),
                              peak_seconds=np.zeros(0), weights=np.zeros((0, 0), np.float32), features=feats,
                              audio_seconds=audio_seconds, seconds=time.perf_counter() - start)
        batch = feats[None] if self._xp is None else self._xp.asarray(feats[None])
        enc, enc_lengths = self.model.encode(batch, [feats.shape[0]])
        o = self.options
        if o.beam_size == 1 and o.ctc_weight == 0:
            hyp = greedy_search(self.model.decoder, enc, enc_lengths, maxlenratio=o.maxlenratio, penalty=o.penalty)[0]
        else:
            lpz = self.model.ctc_log_probs(enc)[0] if o.ctc_weight > 0 else None
            hyp = beam_search(self.model.decoder, enc[0], ctc_logp=lpz, options=o)[0]
        seconds = time.perf_counter() - start
        ids = [int(t) for t in hyp.tokens]
        tokens = [self.model.token_list[i] for i in ids]
        frame_seconds = audio_seconds / max(enc.shape[1], 1)
        return Transcript(text=tokens_to_text(tokens), tokens=tokens, token_ids=ids, score=float(hyp.score),
                          peaks=np.asarray(hyp.peaks), peak_seconds=(np.asarray(hyp.peaks) + 0.5) * frame_seconds,
                          weights=np.asarray(hyp.weights), features=feats, audio_seconds=audio_seconds,
                          seconds=seconds)
