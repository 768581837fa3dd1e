"""End-to-end decoding on attnkit: features of the bundled samples, encoder and a search, timed as
one call over all of them. Used by `attnkit bench --ops decode` and `benchmarks/bench_decode.py`
(which sets ESPnet's own PyTorch loops beside it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from attnkit.bench.cases import DecodeCase

# greedy_search; beam_search (ESPnet's recognize_beam, one utterance at a time);
# batch_beam_search (ESPnet's recognize_beam_batch)
SEARCHES = ("greedy", "beam", "batch-beam")

# import name -> distribution, for attnkit[asr]
ASR_PACKAGES = {"yaml": "pyyaml", "safetensors": "safetensors", "soundfile": "soundfile", "soxr": "soxr",
                "kaldi_native_fbank": "kaldi-native-fbank"}


def model_dir(case: "DecodeCase") -> Path:
    from attnkit.asr.recognizer import BUNDLED_MODEL

    return BUNDLED_MODEL if case.model is None else Path(case.model)


def missing(case: "DecodeCase") -> str | None:
    """Why `case` cannot run here (packages of attnkit[asr] or the model directory missing), or None."""
    absent = [dist for mod, dist in ASR_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if absent:
        return f"needs {', '.join(absent)} (pip install 'attnkit[asr]')"
    path = model_dir(case)
    if not (path / "config.yaml").is_file():
        what = "the bundled model is not installed yet" if case.model is None else "not a model directory"
        return f"no model at {path} ({what}; --model DIR picks another)"
    return None


def audio_summary() -> tuple[int, float]:
    """(number of bundled samples, their total duration in seconds), from the file headers."""
    import soundfile

    from attnkit.asr.recognizer import bundled_samples

    infos = [soundfile.info(str(p)) for p in bundled_samples()]
    return len(infos), float(sum(i.frames / i.samplerate for i in infos))


def load_features(rec, wav_files) -> tuple[list[np.ndarray], float]:
    """The filterbank features of each file for Recognizer `rec`, and the audio's total seconds."""
    from attnkit.asr.audio import load_audio

    feats, seconds = [], 0.0
    for path in wav_files:
        samples = load_audio(path, rec.sample_rate)
        seconds += samples.shape[0] / rec.sample_rate
        feats.append(rec.features(samples))
    return feats, seconds


def padded(feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A zero-padded batch ``[B, T, F]`` of the feature matrices and their lengths ``[B]``."""
    lengths = np.array([f.shape[0] for f in feats], np.int64)
    x = np.zeros((len(feats), lengths.max(), feats[0].shape[1]), feats[0].dtype)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lengths


def attnkit_runner(model, search: str, beam: int, batch: int, xp=None,
                   ctc_weight: float = 0.0) -> Callable[[list[np.ndarray]], list[list[int]]]:
    """A function decoding a list of feature matrices, `batch` at a time, to token-id lists. With
    `xp` (CuPy) each batch's features are copied to the current GPU and decoded there.
    `ctc_weight` > 0: joint CTC/attention beam searches (greedy search has no CTC)."""
    from attnkit.asr.search import SearchOptions, batch_beam_search, beam_search, greedy_search

    if search not in SEARCHES:
        raise ValueError(f"attnkit_runner: search must be one of {SEARCHES}, got {search!r}")
    options = SearchOptions(beam_size=beam, ctc_weight=ctc_weight)

    def run(feats):
        out = []
        for i in range(0, len(feats), batch):
            x, lengths = padded(feats[i:i + batch])
            enc, enc_lengths = model.encode(x if xp is None else xp.asarray(x), lengths)
            lpz = model.ctc_log_probs(enc) if ctc_weight > 0 and search != "greedy" else None
            if search == "greedy":
                out += [h.tokens.tolist() for h in greedy_search(model.decoder, enc, enc_lengths)]
            elif search == "beam":
                out += [beam_search(model.decoder, enc[b, :enc_lengths[b]],
                                    ctc_logp=None if lpz is None else lpz[b, :enc_lengths[b]],
                                    options=options)[0].tokens.tolist() for b in range(enc.shape[0])]
            else:
                out += [hs[0].tokens.tolist()
                        for hs in batch_beam_search(model.decoder, enc, enc_lengths, ctc_logp=lpz, options=options)]
        return out

    return run


def load_inputs(case: "DecodeCase") -> dict:
    """{"model": the AsrModel in the case's dtype, "feats": the bundled samples' features}."""
    from attnkit.asr.model import AsrModel
    from attnkit.asr.recognizer import Recognizer, bundled_samples

    model = AsrModel.load(model_dir(case), dtype=np.dtype(case.dtype))
    feats, _ = load_features(Recognizer(model), bundled_samples())
    return {"model": model, "feats": [f.astype(case.dtype, copy=False) for f in feats]}


def attnkit_calls(case: "DecodeCase", copies: list[dict]) -> list[Callable[[], object]]:
    runners = [attnkit_runner(c["model"], case.search, case.beam, case.batch) for c in copies]
    return [lambda run=run, c=c: run(c["feats"]) for run, c in zip(runners, copies)]
