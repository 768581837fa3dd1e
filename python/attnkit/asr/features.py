"""The model's input features, rebuilt from its config (``AsrConfig.features``).

Only Kaldi-compatible log-mel filterbanks (``type: kaldi_fbank``) exist today, computed by
kaldi-native-fbank with the settings the model was trained with.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnkit._core import UnsupportedError


class FeatureExtractor:
    """``extractor(samples [S] float32 in [-1, 1]) -> [frames, num_mel_bins]`` float32.

    config: ``{type: kaldi_fbank, sample_rate, num_mel_bins, frame_length_ms, frame_shift_ms,
    dither, waveform_scale}`` (waveform_scale: Kaldi reads 16-bit samples as integers, so a float
    waveform is scaled by 32768 first).
    """

    def __init__(self, config: Mapping[str, Any] | None):
        if not config or config.get("type") != "kaldi_fbank":
            kind = None if not config else config.get("type")
            raise UnsupportedError(
                f"FeatureExtractor: the model's features must be of type 'kaldi_fbank' (the only front end "
                f"attnkit computes), got {kind!r}; compute the features yourself and call AsrModel.encode")
        import kaldi_native_fbank as knf

        self.sample_rate = int(config["sample_rate"])
        self.frame_shift_s = float(config.get("frame_shift_ms", 10.0)) / 1000
        self.num_bins = int(config["num_mel_bins"])
        self.scale = float(config.get("waveform_scale", 32768.0))
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = self.sample_rate
        opts.frame_opts.frame_length_ms = float(config.get("frame_length_ms", 25.0))
        opts.frame_opts.frame_shift_ms = float(config.get("frame_shift_ms", 10.0))
        opts.frame_opts.dither = float(config.get("dither", 0.0))
        opts.mel_opts.num_bins = self.num_bins
        self._opts = opts
        self._knf = knf

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        fbank = self._knf.OnlineFbank(self._opts)
        fbank.accept_waveform(self.sample_rate, np.asarray(samples, np.float32) * self.scale)
        fbank.input_finished()
        n = fbank.num_frames_ready
        out = np.empty((n, self.num_bins), np.float32)
        for i in range(n):
            out[i] = fbank.get_frame(i)
        return out
