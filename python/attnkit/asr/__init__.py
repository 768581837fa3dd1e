"""Speech recognition on attnkit, on NumPy: ESPnet's RNN encoders and attention decoder, CTC prefix
scoring, the RNN LM, the searches (greedy, ``recognize_beam``, ``recognize_beam_batch``), model
files (``AsrModel``, ``convert_espnet``) and the audio-to-text ``Recognizer``."""
from attnkit.asr.ctc_prefix import CTCPrefixScore, CTCPrefixScoreBatch
from attnkit.asr.decoder import DecoderPrepared, DecoderState, RNNDecoder
from attnkit.asr.lm import LMState, RNNLM
from attnkit.asr.search import Hypothesis, SearchOptions, batch_beam_search, beam_search, greedy_search
from attnkit.asr.model import AsrConfig, AsrModel
from attnkit.asr.espnet_import import convert_espnet
from attnkit.asr.audio import AudioError, load_audio
from attnkit.asr.recognizer import Recognizer, Transcript, bundled_samples

__all__ = [
    "AsrConfig",
    "AsrModel",
    "AudioError",
    "Recognizer",
    "Transcript",
    "bundled_samples",
    "convert_espnet",
    "load_audio",
    "CTCPrefixScore",
    "CTCPrefixScoreBatch",
    "DecoderPrepared",
    "DecoderState",
    "Hypothesis",
    "LMState",
    "RNNDecoder",
    "RNNLM",
    "SearchOptions",
    "batch_beam_search",
    "beam_search",
    "greedy_search",
]
