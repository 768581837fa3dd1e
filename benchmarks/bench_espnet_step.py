#!/usr/bin/env python
"""The issue-3 benchmark: one decoder step of ESPnet's RNN attentions, attnkit beside NumPy and a
PyTorch eager implementation of the same math (written here, as ESPnet writes it: projections
cached per utterance, the encoder repeated per hypothesis as in ESPnet's batch beam search).

Classes AttLoc, AttAdd, AttDot and AttMultiHeadLoc at ESPnet's recipe sizes (E = A = Dz = 320,
C = 10, F = 100, 4 heads), N in {1, 10, 40} rows (1 utterance x 1, 1 x 10, 4 x 10 hypotheses),
T in {200, 1000}, at 1 and 2 threads. Prints a Markdown table and writes
benchmarks/results/<date>-cpu-espnet-step.json (JSON lines) and .md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import numpy as np

import attnkit
from attnkit.bench.machine import BlasThreads, header, set_all_threads
from attnkit.bench.report import JsonLines
from attnkit.bench.runner import IDLE_GAP_S
from attnkit.bench.timing import measure

E = A = DZ = 320
C, F, HEADS = 10, 100, 4
CLASSES = ("AttLoc", "AttAdd", "AttDot", "AttMultiHeadLoc")
LAYOUTS = {1: (1, 1), 10: (1, 10), 40: (4, 10)}  # N -> (utterances, hypotheses each)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_attention(name: str):
    cls = getattr(attnkit.espnet, name)
    if name == "AttLoc":
        return cls(E, DZ, A, C, F, seed=0)
    if name in ("AttAdd", "AttDot"):
        return cls(E, DZ, A, seed=0)
    return cls(E, DZ, HEADS, A, A, C, F, seed=0)


def numpy_step(name, p, pre, enc, valid, dec_z, a_prev):
    """ESPnet's step in NumPy on per-row repeated arrays: pre [N,T,A] (or per head), enc [N,T,E]."""
    def loc_term(a, w_conv, w_att):
        n, t = a.shape
        k = w_conv.shape[-1]
        padded = np.zeros((n, t + k - 1), a.dtype)
        padded[:, F : F + t] = a
        cols = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)  # [N, T, K]
        return (cols @ w_conv.reshape(C, k).T) @ w_att.T

    def softmax_context(e, values, scaling):
        e = np.where(valid, scaling * e, -np.inf)
        e -= e.max(1, keepdims=True)
        w = np.exp(e)
        w /= w.sum(1, keepdims=True)
        return np.einsum("nt,nte->ne", w, values), w

    if name == "AttDot":
        q = np.tanh(dec_z @ p["mlp_dec.weight"].T + p["mlp_dec.bias"])
        return softmax_context(np.einsum("nta,na->nt", pre, q), enc, 2.0)
    if name in ("AttAdd", "AttLoc"):
        x = pre + (dec_z @ p["mlp_dec.weight"].T)[:, None]
        if name == "AttLoc":
            x += loc_term(a_prev, p["loc_conv.weight"], p["mlp_att.weight"])
        return softmax_context(np.tanh(x) @ p["gvec.weight"][0] + p["gvec.bias"][0], enc, 2.0)
    ctx = []
    for h in range(HEADS):
        k_h, v_h = pre[h]
        x = k_h + (dec_z @ p[f"mlp_q.{h}.weight"].T + p[f"mlp_q.{h}.bias"])[:, None]
        x += loc_term(a_prev, p[f"loc_conv.{h}.weight"], p[f"mlp_att.{h}.weight"])
        c_h, _ = softmax_context(np.tanh(x) @ p[f"gvec.{h}.weight"][0] + p[f"gvec.{h}.bias"][0], v_h, 2.0)
        ctx.append(c_h)
    return np.concatenate(ctx, 1) @ p["mlp_o.weight"].T, None


def torch_step(torch, name, p, pre, enc, valid, dec_z, a_prev):
    """The same step in PyTorch eager ops, as ESPnet's forward() writes it."""
    F_ = torch.nn.functional

    def loc_term(a, w_conv, w_att):
        f = F_.conv2d(a.view(a.shape[0], 1, 1, -1), w_conv, padding=(0, F)).squeeze(2).transpose(1, 2)
        return F_.linear(f, w_att)

    def softmax_context(e, values, scaling):
        w = torch.softmax(scaling * e.masked_fill(~valid, float("-inf")), dim=1)
        return torch.sum(values * w.unsqueeze(2), dim=1), w

    if name == "AttDot":
        q = torch.tanh(F_.linear(dec_z, p["mlp_dec.weight"], p["mlp_dec.bias"]))
        return softmax_context(torch.sum(pre * q.unsqueeze(1), dim=2), enc, 2.0)
    if name in ("AttAdd", "AttLoc"):
        x = pre + F_.linear(dec_z, p["mlp_dec.weight"]).unsqueeze(1)
        if name == "AttLoc":
            x = x + loc_term(a_prev, p["loc_conv.weight"], p["mlp_att.weight"])
        e = F_.linear(torch.tanh(x), p["gvec.weight"], p["gvec.bias"]).squeeze(2)
        return softmax_context(e, enc, 2.0)
    ctx = []
    for h in range(HEADS):
        k_h, v_h = pre[h]
        x = k_h + F_.linear(dec_z, p[f"mlp_q.{h}.weight"], p[f"mlp_q.{h}.bias"]).unsqueeze(1)
        x = x + loc_term(a_prev, p[f"loc_conv.{h}.weight"], p[f"mlp_att.{h}.weight"])
        e = F_.linear(torch.tanh(x), p[f"gvec.{h}.weight"], p[f"gvec.{h}.bias"]).squeeze(2)
        ctx.append(softmax_context(e, v_h, 2.0)[0])
    return F_.linear(torch.cat(ctx, dim=1), p["mlp_o.weight"]), None


def setup(name, n_rows, T, rng):
    utts, hyps = LAYOUTS[n_rows]
    att = make_attention(name)
    p = {k: np.ascontiguousarray(v, np.float32) for k, v in att.params.items()}
    enc = rng.standard_normal((utts, T, E)).astype(np.float32)
    lengths = np.array([T - 37 * u for u in range(utts)])
    prepared = att.prepare(enc, lengths)
    rows = np.repeat(np.arange(utts), hyps)
    dec_z = rng.standard_normal((n_rows, DZ)).astype(np.float32)
    state = att.initial_state(prepared, rows) if name != "AttDot" and name != "AttAdd" else None
    # Peers: per-row repeated encoder and projections, as ESPnet's batch beam search holds them.
    enc_rows = enc[rows]
    valid = np.arange(T)[None, :] < lengths[rows][:, None]
    a_prev = (valid / valid.sum(1, keepdims=True)).astype(np.float32)
    if name == "AttDot":
        pre = np.tanh(enc_rows @ p["mlp_enc.weight"].T + p["mlp_enc.bias"])
    elif name in ("AttAdd", "AttLoc"):
        pre = enc_rows @ p["mlp_enc.weight"].T + p["mlp_enc.bias"]
    else:
        pre = [(enc_rows @ p[f"mlp_k.{h}.weight"].T, enc_rows @ p[f"mlp_v.{h}.weight"].T) for h in range(HEADS)]
    step = lambda: att.step(prepared, dec_z, state, rows=rows)
    return step, (p, pre, enc_rows, valid, dec_z, a_prev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--max-seconds", type=float, default=0.5, help="time budget per case and backend")
    ap.add_argument("--out-dir", default=RESULTS)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    threads = [int(t) for t in args.threads.split(",")]
    blas = BlasThreads()
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{datetime.date.today().isoformat()}-cpu-espnet-step")
    out = JsonLines(stem + ".json")
    head = header(threads, blas, ["benchmarks/bench_espnet_step.py", *(sys.argv[1:] if argv is None else argv)])
    out.write(head)
    lines = [f"ESPnet attention step, float32, {head['cpu_model']}, {head['date']}", "",
             "| class | N | T | threads | attnkit us | numpy us | torch eager us | vs torch | vs numpy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rng = np.random.default_rng(0)
    for th in threads:
        set_all_threads(th, blas)
        for name in CLASSES:
            for T in (200, 1000):
                for n_rows in (1, 10, 40):
                    step, (p, pre, enc_rows, valid, dec_z, a_prev) = setup(name, n_rows, T, rng)
                    # Idle first, so the previous backend's spinning workers (OpenMP, OpenBLAS) are asleep.
                    time.sleep(IDLE_GAP_S)
                    t_ak = measure([step], budget_s=args.max_seconds)
                    time.sleep(IDLE_GAP_S)
                    t_np = measure([lambda: numpy_step(name, p, pre, enc_rows, valid, dec_z, a_prev)],
                                   budget_s=args.max_seconds)
                    t_th = None
                    if torch is not None:
                        tp = {k: torch.from_numpy(v) for k, v in p.items()}
                        tpre = ([(torch.from_numpy(k), torch.from_numpy(v)) for k, v in pre] if isinstance(pre, list)
                                else torch.from_numpy(pre))
                        targs = (tpre, torch.from_numpy(enc_rows), torch.from_numpy(valid), torch.from_numpy(dec_z),
                                 torch.from_numpy(a_prev))

                        def eager():
                            with torch.inference_mode():
                                return torch_step(torch, name, tp, *targs)

                        time.sleep(IDLE_GAP_S)
                        t_th = measure([eager], budget_s=args.max_seconds)
                    rec = {"type": "case", "class": name, "N": n_rows, "T": T, "threads": th,
                           "attnkit_us": t_ak.median_us, "attnkit_iqr_us": t_ak.iqr_us,
                           "numpy_us": t_np.median_us, "torch_eager_us": t_th.median_us if t_th else None}
                    out.write(rec)
                    vs_t = f"{t_th.median_us / t_ak.median_us:.1f}x" if t_th else "n/a"
                    row = (f"| {name} | {n_rows} | {T} | {th} | {t_ak.median_us:.0f} | {t_np.median_us:.0f} | "
                           f"{t_th.median_us:.0f} | {vs_t} | {t_np.median_us / t_ak.median_us:.1f}x |"
                           if t_th else
                           f"| {name} | {n_rows} | {T} | {th} | {t_ak.median_us:.0f} | {t_np.median_us:.0f} | "
                           f"n/a | n/a | {t_np.median_us / t_ak.median_us:.1f}x |")
                    lines.append(row)
                    print(row, flush=True)
    out.close()
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
