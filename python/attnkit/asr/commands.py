"""`attnkit transcribe` and `attnkit evaluate`: recognition from the command line."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="attnkit model directory (default: the bundled digit recogniser)")
    p.add_argument("--beam", type=int, default=1, help="beam size; 1 without CTC is greedy search (default 1)")
    p.add_argument("--ctc-weight", type=float, default=0.0,
                   help="joint CTC/attention weight in [0, 1] (model with a CTC branch; default 0)")
    p.add_argument("--penalty", type=float, default=0.0, help="score added per emitted token (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the encoder and search run (default cpu); cuda needs CuPy and a GPU")


def _recognizer(args):
    from attnkit._core import UnsupportedError
    from attnkit.asr.recognizer import Recognizer

    if args.device == "cuda":
        from attnkit.asr.recognizer import gpu_array_module

        try:
            gpu_array_module()  # CuPy, the CUDA build and a GPU, before the model is loaded
        except UnsupportedError as e:
            raise SystemExit(f"attnkit: --device cuda: {e}") from None
    return Recognizer(args.model, beam=args.beam, ctc_weight=args.ctc_weight, penalty=args.penalty,
                      device=args.device)


def _progress(items, what: str):
    from tqdm import tqdm

    # Shown for a handful of files or more, on a terminal only (tqdm's disable=None).
    return tqdm(items, desc=what, unit="file", disable=None if len(items) >= 5 else True, file=sys.stderr)


def run_transcribe(args) -> int:
    from attnkit.asr.audio import AudioError
    from attnkit.asr.recognizer import bundled_samples

    files = [Path(f) for f in args.files] or bundled_samples()
    if not files:
        print("attnkit transcribe: no files given and no bundled samples found", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked before any file is decoded)
        except ImportError:
            print("attnkit transcribe: --plot needs matplotlib: pip install 'attnkit[plot]'", file=sys.stderr)
            return 2
        from attnkit.plot import plot_attention
    recognizer = _recognizer(args)
    failed = 0
    records = []
    for path in _progress(files, "transcribe"):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = recognizer.transcribe_file(path)
            for w in caught:
                print(f"{path}: warning: {w.message}", file=sys.stderr)
        except (AudioError, OSError) as e:
            failed += 1
            print(f"{path}: error: {e}", file=sys.stderr)
            records.append({"file": str(path), "error": str(e)})
            continue
        print(f"{path.name}\t{result.text}\tscore {result.score:.2f}\tRTF {result.rtf:.3f}", flush=True)
        records.append({"file": str(path), **result.to_json()})
        if args.plot:
            plot_attention(result, Path(args.plot) / f"{path.stem}.png", title=f"{path.name}: “{result.text}”")
    if args.json:
        text = "".join(json.dumps(r) + "\n" for r in records)
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    return 1 if failed else 0


def edit_distance(ref, hyp) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def read_transcripts(path: Path) -> dict[str, str]:
    """Lines ``<utterance id or file name> <text>``."""
    refs = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, text = line.strip().partition(" ")
        if not text:
            raise ValueError(f"{path}:{n}: expected '<id> <text>', got {line!r}")
        refs[Path(key).stem] = text.strip()
    return refs


def run_evaluate(args) -> int:
    from attnkit.asr.audio import AudioError

    folder = Path(args.folder)
    transcripts = Path(args.transcripts) if args.transcripts else folder / "transcripts.txt"
    if not transcripts.is_file():
        print(f"attnkit evaluate: {transcripts} not found (give --transcripts FILE: lines '<id> <text>')",
              file=sys.stderr)
        return 2
    refs = read_transcripts(transcripts)
    audio = {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES}
    missing = sorted(set(refs) - set(audio))
    if missing:
        print(f"attnkit evaluate: no audio for {len(missing)} transcript(s), e.g. {missing[:3]}", file=sys.stderr)
        return 2
    recognizer = _recognizer(args)
    keys = sorted(refs)[: args.limit] if args.limit else sorted(refs)
    char_err = char_total = word_err = word_total = 0
    seconds = audio_seconds = 0.0
    failed = 0
    rows = []
    for key in _progress(keys, "evaluate"):
        try:
            result = recognizer.transcribe_file(audio[key])
        except (AudioError, OSError) as e:
            failed += 1
            print(f"{audio[key]}: error: {e}", file=sys.stderr)
            continue
        ref, hyp = refs[key], result.text
        # Characters without spaces, as ESPnet's CER; words split on spaces.
        ce = edit_distance(ref.replace(" ", ""), hyp.replace(" ", ""))
        we = edit_distance(ref.split(), hyp.split())
        char_err, char_total = char_err + ce, char_total + len(ref.replace(" ", ""))
        word_err, word_total = word_err + we, word_total + len(ref.split())
        seconds, audio_seconds = seconds + result.seconds, audio_seconds + result.audio_seconds
        rows.append({"id": key, "ref": ref, "hyp": hyp, "char_errors": ce, "word_errors": we})
        if args.verbose and (ce or we):
            print(f"{key}\tref: {ref}\thyp: {hyp}")
    summary = {
        "utterances": len(rows), "failed": failed,
        "cer": char_err / max(char_total, 1), "wer": word_err / max(word_total, 1),
        "rtf": seconds / audio_seconds if audio_seconds else float("nan"),
        "audio_seconds": audio_seconds, "beam": args.beam, "ctc_weight": args.ctc_weight,
    }
    print(f"utterances {summary['utterances']}  CER {100 * summary['cer']:.2f}%  WER {100 * summary['wer']:.2f}%  "
          f"RTF {summary['rtf']:.4f}  (beam {args.beam}, ctc weight {args.ctc_weight})")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "utterances": rows}, indent=1), encoding="utf-8")
    return 1 if failed else 0


def add_parsers(sub) -> None:
    t = sub.add_parser("transcribe", help="transcribe audio files (default: the bundled samples)",
                       description="Transcribe WAV/FLAC files at any sample rate, mono or stereo. With no file, "
                                   "transcribes the samples shipped with attnkit.")
    t.add_argument("files", nargs="*", help="audio files (default: the bundled samples)")
    _add_search_options(t)
    t.add_argument("--json", metavar="PATH", help="write one JSON object per file (tokens, score, timings, "
                                                   "attention peak per token) to PATH ('-': stdout)")
    t.add_argument("--plot", metavar="DIR", help="write each file's attention alignment as DIR/<name>.png "
                                                  "(needs matplotlib)")
    t.set_defaults(func=run_transcribe)

    e = sub.add_parser("evaluate", help="character and word error rates on a folder of audio with transcripts")
    e.add_argument("folder", help="folder searched (recursively) for audio files named <id>.wav / .flac")
    e.add_argument("--transcripts", metavar="FILE", help="lines '<id> <text>' (default FOLDER/transcripts.txt)")
    _add_search_options(e)
    e.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances")
    e.add_argument("--json", metavar="PATH", help="write the summary and per-utterance results to PATH")
    e.add_argument("--verbose", action="store_true", help="print the utterances with errors")
    e.set_defaults(func=run_evaluate)
