"""ESPnet's RNN attention family (espnet/nets/pytorch_backend/rnn/attentions.py), on NumPy.

Two layers:

- attnkit's API, in this package: one class per ESPnet class, holding its weights under ESPnet's
  state_dict names. ``prepare(enc [B, T, E], lengths) -> Prepared`` computes the per-utterance
  cache once; ``step(prepared, dec_z [N, Dz] or None, state, *, scaling=..., rows=None, ...)``
  returns an ``AttentionOutput(context, weights, state, peak)`` for N rows (``rows[n]`` is the
  utterance of row n: a whole beam in one call). Steps are pure: they never mutate their inputs.
- ``attnkit.espnet.compat``: drop-in wrappers with ESPnet's constructors, ``reset()``,
  ``load_state_dict`` and ``__call__`` returning ESPnet's ``(context, state)`` structures, plus the
  factories ``initial_att`` and ``att_for``.

The numbers are ESPnet's (espnet 202511), quirks included (spec: espnet_attention.md); fixes for
ESPnet's bugs are keyword options, off by default.
"""
from attnkit.espnet._base import (AttentionOutput, CoverageState, EspnetAttention, ForwardTAState, LocRecState,
                                  Prepared)
from attnkit.espnet.additive import AttAdd
from attnkit.espnet.coverage import AttCov
from attnkit.espnet.coverage_location import AttCovLoc
from attnkit.espnet.dot import AttDot
from attnkit.espnet.forward import AttForward, AttForwardTA
from attnkit.espnet.gdc import GDCAttLoc
from attnkit.espnet.location import AttLoc
from attnkit.espnet.location2d import AttLoc2D
from attnkit.espnet.location_recurrent import AttLocRec
from attnkit.espnet.multi_head import AttMultiHeadAdd, AttMultiHeadDot, AttMultiHeadLoc, AttMultiHeadMultiResLoc
from attnkit.espnet.no_att import NoAtt
from attnkit.espnet import compat
from attnkit.espnet.factory import ATYPES, att_for, initial_att

__all__ = [
    "ATYPES", "AttAdd", "AttCov", "AttCovLoc", "AttDot", "AttForward", "AttForwardTA", "AttLoc", "AttLoc2D",
    "AttLocRec", "AttMultiHeadAdd", "AttMultiHeadDot", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc",
    "AttentionOutput", "CoverageState", "EspnetAttention", "ForwardTAState", "GDCAttLoc", "LocRecState", "NoAtt",
    "Prepared", "att_for", "compat", "initial_att",
]
