"""The recogniser's input features: 80-dim Kaldi log-mel filterbank of 16 kHz audio.

The same settings go into the exported config (`attnkit_features`), so an inference front end
can rebuild the features exactly.
"""

import kaldi_native_fbank as knf
import numpy as np

SAMPLE_RATE = 16000

# Written verbatim as `attnkit_features` in config.yaml. `waveform_scale`: Kaldi feeds 16-bit
# samples as their integer values, so a float waveform in [-1, 1] is multiplied by 32768 first.
FEATURE_CONFIG = {
    "type": "kaldi_fbank",
    "sample_rate": SAMPLE_RATE,
    "num_mel_bins": 80,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "dither": 0.0,
    "waveform_scale": 32768.0,
}


def _fbank_options() -> knf.FbankOptions:
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = FEATURE_CONFIG["sample_rate"]
    options.frame_opts.frame_length_ms = FEATURE_CONFIG["frame_length_ms"]
    options.frame_opts.frame_shift_ms = FEATURE_CONFIG["frame_shift_ms"]
    options.frame_opts.dither = FEATURE_CONFIG["dither"]
    options.mel_opts.num_bins = FEATURE_CONFIG["num_mel_bins"]
    return options


def fbank(samples_int16: np.ndarray) -> np.ndarray:
    """[S] int16 samples at 16 kHz -> [frames, 80] float32 log-mel (snip_edges: (S - 400) // 160 + 1 frames)."""
    computer = knf.OnlineFbank(_fbank_options())
    computer.accept_waveform(SAMPLE_RATE, samples_int16.astype(np.float32))
    computer.input_finished()
    frames = [computer.get_frame(i) for i in range(computer.num_frames_ready)]
    return np.asarray(frames, dtype=np.float32).reshape(-1, FEATURE_CONFIG["num_mel_bins"])
