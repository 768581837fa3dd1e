"""End-to-end decoding speed: attnkit's NumPy decoder loop against ESPnet's own PyTorch loop.

The same model (an attnkit model directory; default: the bundled digit recogniser) runs
  - on attnkit: ``AsrModel.encode`` + ``greedy_search`` / ``beam_search`` (ESPnet's
    ``recognize_beam``) / ``batch_beam_search`` (``recognize_beam_batch``), through
    ``attnkit.bench.decode`` (``attnkit bench --ops decode`` times the same, attnkit only);
  - on PyTorch eager, where torch and espnet are installed: the recipe's PyTorch encoder
    (recipes/digits/model.py) + ESPnet's espnet1 ``Decoder`` with ``AttLoc`` and its
    ``recognize_beam`` / ``recognize_beam_batch`` loops, loaded with the same float32 weights.
Features (kaldi-native-fbank) are computed once beforehand and are not timed: both sides use the
same ones. Reported: utterances per second, real-time factor (compute / audio), and the ratio,
from the medians of --repeats runs per side, attnkit and PyTorch taking turns (the load of these
shared hosts moves by 20-40% within minutes). Both libraries get the same thread count (--threads).

    python benchmarks/bench_decode.py [--model DIR] [--wav-dir DIR] [--threads 1] [--out PREFIX]
                                      [--ctc-weight 0.3] [--device cuda]

With --device cuda both sides decode on the GPU (attnkit: encoder and searches on CuPy arrays;
PyTorch: the same loops on CUDA tensors); the times include copying each batch's features to the
device.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from attnkit.bench.decode import attnkit_runner, load_features, padded

ROOT = Path(__file__).resolve().parents[1]


def torch_runner(model, mode, beam, batch, device="cpu", ctc_weight=0.0):
    """ESPnet's espnet1 Decoder loops on PyTorch with the model's weights (on `device`); None without
    torch/espnet."""
    try:
        import torch
        from espnet.nets.pytorch_backend.rnn.attentions import AttLoc
        from espnet.nets.pytorch_backend.rnn.decoders import Decoder
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "recipes" / "digits"))
    from model import DigitRecogniser  # the recipe's PyTorch model (same names, same math)

    weights = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in model.weights.items()}
    V, c = model.vocab_size, model.config
    torch_model = DigitRecogniser(V, c.input_size, weights["normalize.mean"], weights["normalize.std"]).eval()
    torch_model.load_state_dict(weights)
    d, a = c.decoder_conf, c.decoder_conf["att_conf"]
    att = AttLoc(c.eprojs, d["hidden_size"], a["adim"], a["aconv_chans"], a["aconv_filts"])
    dec = Decoder(c.eprojs, V, d["rnn_type"], d["num_layers"], d["hidden_size"], V - 1, V - 1, torch.nn.ModuleList([att]),
                  context_residual=d["context_residual"]).eval()
    local = {}
    for k, v in weights.items():
        if k.startswith("decoder.att_list.0."):
            local["att.0." + k[len("decoder.att_list.0."):]] = v
        elif k.startswith("decoder."):
            local[k[len("decoder."):]] = v
    dec.load_state_dict(local)
    torch_model.to(device)
    dec.to(device)
    args = SimpleNamespace(beam_size=beam, penalty=0.0, ctc_weight=ctc_weight, maxlenratio=0.0, minlenratio=0.0,
                           nbest=1, lm_weight=0.0)
    char_list = list(model.token_list)

    @torch.inference_mode()
    def run(feats):
        out = []
        for i in range(0, len(feats), batch):
            x, lengths = padded(feats[i:i + batch])
            enc, enc_lengths = torch_model.encode(torch.from_numpy(x).to(device), torch.from_numpy(lengths).to(device))
            lpz = torch_model.ctc.log_probs(enc) if ctc_weight > 0 and mode != "greedy" else None
            if mode == "batch-beam":
                hyps = dec.recognize_beam_batch(enc, enc_lengths, lpz, args, char_list)
                out += [h[0]["yseq"][1:-1] for h in hyps]
            else:  # ESPnet's recognize_beam, one utterance at a time (beam 1 = greedy)
                for b in range(enc.shape[0]):
                    n = int(enc_lengths[b])
                    hyp = dec.recognize_beam(enc[b, :n], None if lpz is None else lpz[b, :n], args, char_list)
                    out.append(list(hyp[0]["yseq"][1:-1]))
        return [[int(t) for t in h] for h in out]
    return run


def timed(fns, feats, repeats):
    """Times each of ``fns`` decoding all of ``feats``, the runners taking turns in every repeat (so
    that a change of the shared host's load lands on all of them); returns per runner (median
    seconds, all seconds, hypotheses)."""
    for fn in fns:
        fn(feats[:2])  # warm-up
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn(feats)
            times[i].append(time.perf_counter() - t0)
    return [(float(np.median(t)), t, out) for t, out in zip(times, outs)]


def main(argv=None) -> int:
    import attnkit
    from attnkit.asr.recognizer import BUNDLED_MODEL, Recognizer, bundled_samples

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BUNDLED_MODEL))
    p.add_argument("--wav-dir", help="folder of WAV files to decode (default: the bundled samples)")
    p.add_argument("--limit", type=int, default=64, help="at most this many files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16, help="utterances per batch in the batched search")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side, attnkit and torch in turns")
    p.add_argument("--out", help="write PREFIX.json and PREFIX.md")
    p.add_argument("--ctc-weight", type=float, default=0.0,
                   help="joint CTC/attention weight of the beam searches on both sides (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: attnkit on CuPy arrays and PyTorch on its CUDA device (features still on the host)")
    args = p.parse_args(argv)

    attnkit.set_num_threads(args.threads)
    xp = None
    if args.device == "cuda":
        from attnkit.asr.recognizer import gpu_array_module

        xp = gpu_array_module()
    rec = Recognizer(args.model)
    files = sorted(Path(args.wav_dir).rglob("*.wav"))[: args.limit] if args.wav_dir else bundled_samples()
    feats, audio_seconds = load_features(rec, files)
    try:
        import torch
        torch.set_num_threads(args.threads)
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    cases = [("greedy", 1, 1)] if args.ctc_weight == 0 else []  # greedy search has no CTC
    cases += [("beam", 10, 1), ("batch-beam", 10, args.batch)]
    rows = []
    for mode, beam, batch in cases:
        ours = attnkit_runner(rec.model, mode, beam, batch, xp, args.ctc_weight)
        theirs = torch_runner(rec.model, mode, beam, batch, args.device, args.ctc_weight)
        results = timed([ours] if theirs is None else [ours, theirs], feats, args.repeats)
        t_ak, all_ak, out_ak = results[0]
        row = {"search": mode, "beam": beam, "batch": batch, "utterances": len(feats), "audio_seconds": audio_seconds,
               "attnkit_s": t_ak, "attnkit_rtf": t_ak / audio_seconds, "attnkit_utt_per_s": len(feats) / t_ak,
               "attnkit_all_s": all_ak}
        if len(results) > 1:
            t_pt, all_pt, out_pt = results[1]
            row.update(torch_s=t_pt, torch_rtf=t_pt / audio_seconds, torch_utt_per_s=len(feats) / t_pt,
                       torch_all_s=all_pt, speedup=t_pt / t_ak,
                       same_hypotheses=sum(a == b for a, b in zip(out_ak, out_pt)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "threads": args.threads,
            "attnkit": attnkit.__version__, "numpy": np.__version__, "torch": torch_version,
            "cpu_isa": attnkit.show_config().get("cpu_isa_active"), "model": args.model,
            "files": len(files), "device": args.device, "ctc_weight": args.ctc_weight, "repeats": args.repeats}
    if xp is not None:
        meta["gpu"] = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()
        meta["cupy"] = xp.__version__
    if args.out:
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        where = f"on {meta['gpu']}" if xp is not None else f"{args.threads} thread(s)"
        what = f", ctc_weight {args.ctc_weight}" if args.ctc_weight else ""
        lines = [f"Decoding{what}, {meta['files']} utterances ({audio_seconds:.1f} s of audio), {where}, "
                 f"{meta['date']}, attnkit {meta['attnkit']}, torch {torch_version}; medians of {args.repeats} runs "
                 f"per side, the sides taking turns", "",
                 "| search | beam | batch | attnkit RTF | attnkit utt/s | torch RTF | torch utt/s | speed-up | same hyps |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['search']} | {r['beam']} | {r['batch']} | {r['attnkit_rtf']:.4f} | {r['attnkit_utt_per_s']:.1f} | "
                         f"{r.get('torch_rtf', float('nan')):.4f} | {r.get('torch_utt_per_s', float('nan')):.1f} | "
                         f"{r.get('speedup', float('nan')):.1f}x | {r.get('same_hypotheses', '-')}/{r['utterances']} |")
        Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
