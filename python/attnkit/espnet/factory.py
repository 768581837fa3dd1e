"""ESPnet's attention factories, ``initial_att`` and ``att_for``, building the compat wrappers.

The attnkit module behind each wrapper is its ``.core`` (explicit ``prepare`` / ``step`` API).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from attnkit._arrays import describe
from attnkit.espnet import compat

#: atype string -> compat class (ESPnet's ``initial_att`` table; the Forward family and GDC have none).
ATYPES: dict[str, type] = {
    "noatt": compat.NoAtt,
    "dot": compat.AttDot,
    "add": compat.AttAdd,
    "location": compat.AttLoc,
    "location2d": compat.AttLoc2D,
    "location_recurrent": compat.AttLocRec,
    "coverage": compat.AttCov,
    "coverage_location": compat.AttCovLoc,
    "multi_head_dot": compat.AttMultiHeadDot,
    "multi_head_add": compat.AttMultiHeadAdd,
    "multi_head_loc": compat.AttMultiHeadLoc,
    "multi_head_multi_res_loc": compat.AttMultiHeadMultiResLoc,
}


def initial_att(atype: str, eprojs: int, dunits: int, aheads: int, adim: int, awin: int, aconv_chans: int,
                aconv_filts: int, han_mode: bool = False, *, dtype=np.float32):
    """One attention module for ``atype``, as ESPnet's ``initial_att`` (multi-head classes get
    att_dim_k = att_dim_v = adim; location2d gets ``awin``). An unknown atype is a ValueError
    listing the known ones (ESPnet raises UnboundLocalError)."""
    if not isinstance(atype, str) or atype not in ATYPES:
        raise ValueError(f"initial_att: atype must be one of {sorted(ATYPES)}, got {describe(atype)}")
    if atype == "noatt":
        return compat.NoAtt(dtype=dtype)
    if atype in ("dot", "add", "coverage"):
        return ATYPES[atype](eprojs, dunits, adim, han_mode, dtype=dtype)
    if atype in ("location", "location_recurrent", "coverage_location"):
        return ATYPES[atype](eprojs, dunits, adim, aconv_chans, aconv_filts, han_mode, dtype=dtype)
    if atype == "location2d":
        return compat.AttLoc2D(eprojs, dunits, adim, awin, aconv_chans, aconv_filts, han_mode, dtype=dtype)
    if atype in ("multi_head_dot", "multi_head_add"):
        return ATYPES[atype](eprojs, dunits, aheads, adim, adim, han_mode, dtype=dtype)
    return ATYPES[atype](eprojs, dunits, aheads, adim, adim, aconv_chans, aconv_filts, han_mode, dtype=dtype)


def att_for(args: Any, num_att: int = 1, han_mode: bool = False, *, dtype=np.float32):
    """Attention module(s) from an ESPnet argument namespace, as ESPnet's ``att_for``.

    Reads ``args.atype, eprojs, dunits, adim`` and (optionally) ``aheads, awin, aconv_chans,
    aconv_filts, num_encs``. ``num_encs == 1``: a list of ``num_att`` modules (ESPnet: a
    ModuleList). ``num_encs > 1`` with ``han_mode``: a single module from ``args.han_type,
    han_heads, han_dim, han_win, han_conv_chans, han_conv_filts`` with han_mode=True; without: one
    module per encoder from per-encoder lists ``atype, aheads, adim, awin, aconv_chans, aconv_filts``.
    """
    num_encs = getattr(args, "num_encs", 1)
    aheads, awin = getattr(args, "aheads", None), getattr(args, "awin", None)
    chans, filts = getattr(args, "aconv_chans", None), getattr(args, "aconv_filts", None)
    if num_encs == 1:
        return [initial_att(args.atype, args.eprojs, args.dunits, aheads, args.adim, awin, chans, filts, dtype=dtype)
                for _ in range(num_att)]
    if num_encs > 1:
        if han_mode:
            return initial_att(args.han_type, args.eprojs, args.dunits, args.han_heads, args.han_dim, args.han_win,
                               args.han_conv_chans, args.han_conv_filts, han_mode=True, dtype=dtype)
        return [initial_att(args.atype[i], args.eprojs, args.dunits, aheads[i], args.adim[i], awin[i], chans[i],
                            filts[i], dtype=dtype) for i in range(num_encs)]
    raise ValueError(f"att_for: args.num_encs must be >= 1, got {num_encs}")
