"""`attnkit bench` workloads beyond sdpa / mha: ESPnet attention steps and end-to-end decoding,
plots, Ctrl-C, and runs without the optional peers (torch, matplotlib).

Figures are not checked, only counts, outputs and files. Runs are in-process with a 20 ms budget
per case and a 64^3 peak; the whole file takes seconds.
"""
import importlib.util
import json
import sys

import numpy as np
import pytest

import attnkit
from attnkit.bench import cases as bench_cases
from attnkit.bench.backends import AttnkitCPU, NumpyCPU
from attnkit.bench.cases import DecodeCase, EspnetStepCase, espnet_step_case, espnet_step_cases, quick_cases
from attnkit.bench.espnet_step import (attnkit_state, make_attention, numpy_step, reference_inputs,
                                       torch_reference_inputs, torch_step)
from attnkit.bench.plots import write_plots
from attnkit.cli import main

FAST = ["bench", "--max-seconds", "0.02", "--warmup-seconds", "0.01", "--peak-size", "64", "--threads", "1",
        "--no-progress"]
TINY = FAST + ["--case", "tiny", "--backends", "attnkit,numpy"]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- cases and counts ---------------------------------------------------------------------------


def test_espnet_step_cases_cover_class_rows_and_length():
    cases = espnet_step_cases()
    assert len(cases) == 4 * 3 * 2 + 1
    assert len({c.label for c in cases}) == len(cases)
    classes = ("AttLoc", "AttAdd", "AttDot", "AttMultiHeadLoc")
    issue3 = {(cls, n, t) for cls in classes for n in (1, 10, 40) for t in (200, 1000)}
    assert {(c.cls, c.N, c.T) for c in cases} == issue3 | {("AttLoc", 10, 500)}
    assert (espnet_step_case("AttLoc", 40, 200).utterances, espnet_step_case("AttLoc", 40, 200).hyps) == (4, 10)
    assert {c.op for c in quick_cases()} == set(bench_cases.OPS)  # --quick has every op
    assert sum(c.op in ("espnet-step", "decode") for c in quick_cases()) == 2


def test_espnet_step_flops_follow_the_stated_convention():
    small = dict(E=4, A=5, Dz=6, C=2, F=3, heads=3)
    V = 3 * (50 + (50 - 37))  # 3 hypotheses of 2 utterances with 50 and 13 frames
    for cls in ("AttAdd", "AttDot"):
        assert EspnetStepCase(cls, 2, 3, 50, **small).flops() == 2 * 6 * 6 * 5 + V * (2 * 5 + 2 * 4)
    K = 2 * 3 + 1
    assert EspnetStepCase("AttLoc", 2, 3, 50, **small).flops() == (2 * 6 * 6 * 5 + V * (2 * 5 + 2 * 4)
                                                                   + V * (2 * 2 * K + 2 * 2 * 5))
    per_head = 2 * 6 * 6 * 5 + V * (2 * 2 * K + 2 * 2 * 5 + 2 * 5 + 2 * 5)
    assert EspnetStepCase("AttMultiHeadLoc", 2, 3, 50, **small).flops() == 3 * per_head + 2 * 6 * 3 * 5 * 4
    recipe = espnet_step_case("AttAdd", 1, 200)  # E = A = Dz = 320
    assert recipe.flops() == 2 * 320 * 320 + 200 * (2 * 320 + 2 * 320)
    assert recipe.nbytes() > 4 * 200 * (320 + 320)  # at least the cached keys and values


def test_case_arguments_are_checked():
    with pytest.raises(ValueError, match="cls must be one of"):
        EspnetStepCase("AttNope", 1, 1, 10)
    with pytest.raises(ValueError, match="T must exceed"):
        EspnetStepCase("AttAdd", 4, 10, 50)
    with pytest.raises(ValueError, match="search must be one of"):
        DecodeCase("viterbi")
    with pytest.raises(ValueError, match="beam must be 1"):
        DecodeCase("greedy", beam=4)


def test_espnet_step_inputs_hold_distinct_previous_weights():
    """Every row's previous weights differ (rows that share them would let attnkit skip their
    location conv, which only a search's siblings do): each a softmax over its valid frames."""
    case = EspnetStepCase("AttLoc", 2, 3, 60)
    inputs = case.make_inputs(np.random.default_rng(0))
    a, lengths = inputs["a_prev"], inputs["lengths"][inputs["rows"]]
    assert a.shape == (6, 60) and a.dtype == np.float32
    np.testing.assert_allclose(a.sum(1), 1, rtol=1e-5)
    assert all(np.all(a[n, lengths[n]:] == 0) and np.all(a[n, :lengths[n]] > 0) for n in range(6))
    assert len({r.tobytes() for r in a}) == 6


# ---- the peers compute what attnkit computes ---------------------------------------------------------


def step_inputs(cls, dtype="float64"):
    case = EspnetStepCase(cls, 2, 3, 60, dtype=dtype)
    rng = np.random.default_rng(0)
    inputs, params = case.make_inputs(rng), case.make_params(rng)
    att = make_attention(case, params=params)
    prepared = att.prepare(inputs["enc"], inputs["lengths"])
    want = att.step(prepared, inputs["dec_z"], attnkit_state(case, inputs["a_prev"]), rows=inputs["rows"]).context
    return case, inputs, params, want


@pytest.mark.parametrize("cls", ["AttLoc", "AttAdd", "AttDot", "AttMultiHeadLoc"])
def test_numpy_step_computes_what_attnkit_computes(cls):
    case, inputs, params, want = step_inputs(cls)
    got, _ = numpy_step(cls, params, *reference_inputs(case, inputs, params), heads=case.heads)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cls", ["AttLoc", "AttMultiHeadLoc"])
def test_torch_step_computes_what_attnkit_computes(cls):
    torch = pytest.importorskip("torch")
    case, inputs, params, want = step_inputs(cls)
    got, _ = torch_step(torch, cls, *torch_reference_inputs(torch, case, inputs, params), heads=case.heads)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-11)


# ---- runs ----------------------------------------------------------------------------------------


def test_bench_espnet_step_runs_and_prints_rows(tmp_path, capsys):
    path = tmp_path / "step.json"
    rc = main(FAST + ["--quick", "--ops", "espnet-step", "--backends", "attnkit,numpy", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("| espnet-step | AttLoc N=10 T=200") == 2
    cases = [r for r in read_lines(path) if r["type"] == "case"]
    want = espnet_step_case("AttLoc", 10, 200)
    assert [c["backend"] for c in cases] == ["numpy", "attnkit"]
    for c in cases:
        assert c["status"] == "ok" and c["op"] == "espnet-step" and c["seq_len"] == 200
        assert c["flops"] == want.flops() and c["gflops"] > 0 and c["shape"]["N"] == 10
    assert capsys.readouterr().err == ""  # no progress output off a terminal


def test_bench_decode_without_a_model_is_skipped_with_a_note(tmp_path, capsys):
    rc = main(FAST + ["--quick", "--ops", "decode", "--backends", "attnkit", "--model", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "attnkit skipped on decode greedy batch=1" in out and "no model at" in out


def tiny_model(directory):
    """A random model of the bundled one's architecture, a few units wide."""
    from attnkit.asr import AsrConfig, AsrModel

    features = {"type": "kaldi_fbank", "sample_rate": 16000, "num_mel_bins": 20, "frame_length_ms": 25.0,
                "frame_shift_ms": 10.0, "dither": 0.0, "waveform_scale": 32768.0}
    config = {"token_list": ["<blank>", "<unk>", "<space>", "a", "b", "<sos/eos>"], "input_size": 20,
              "features": features, "normalize": "global_mvn", "encoder": "rnn",
              "encoder_conf": {"rnn_type": "lstm", "bidirectional": True, "use_projection": False, "num_layers": 1,
                               "hidden_size": 8, "output_size": 8, "subsample": None, "input_layer": "conv2d",
                               "input_layer_channels": 4, "input_layer_units": 8},
              "decoder": "rnn", "decoder_conf": {"rnn_type": "lstm", "num_layers": 1, "hidden_size": 12,
                                                 "att_conf": {"atype": "location", "adim": 6, "aconv_chans": 2,
                                                              "aconv_filts": 3}},
              "ctc_weight": 0.3}
    rng = np.random.default_rng(0)
    weights = {k: (rng.standard_normal(s) * 0.3).astype(np.float32)
               for k, s in AsrConfig.from_dict(config).param_shapes().items()}
    weights["normalize.mean"][:] = 5
    weights["normalize.std"][:] = 3
    AsrModel(config, weights).save(directory)
    return directory


def test_bench_decode_reports_a_real_time_factor(tmp_path, capsys):
    for module in ("yaml", "safetensors", "soundfile", "soxr", "kaldi_native_fbank"):
        pytest.importorskip(module)
    model = tiny_model(tmp_path / "model")
    path = tmp_path / "decode.json"
    rc = main(FAST + ["--ops", "decode", "--case", "batch-beam", "--backends", "attnkit,numpy",
                      "--model", str(model), "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| batch-beam beam=10 batch=16 |" in out and "RTF" in out
    cases = {r["backend"]: r for r in read_lines(path) if r["type"] == "case"}
    assert cases["numpy"]["status"] == "skipped" and "attnkit only" in cases["numpy"]["note"]
    r = cases["attnkit"]
    assert r["status"] == "ok" and r["utterances"] == 6 and r["audio_seconds"] > 1
    assert r["rtf"] == pytest.approx(r["median_us"] * 1e-6 / r["audio_seconds"]) and r["gflops"] is None


def test_bench_list_shows_every_op(capsys):
    assert main(["bench", "--list", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "espnet-step AttLoc N=10 T=200" in out and "decode      greedy batch=1" in out


# ---- plots ---------------------------------------------------------------------------------------


def test_bench_plot_writes_pngs_during_a_run_and_from_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.json"
    rc = main(TINY + ["--json", str(path), "--plot", str(tmp_path / "live")])
    assert rc == 0
    assert main(["bench", "plot", str(path), "--out", str(tmp_path / "saved")]) == 0
    err = capsys.readouterr().err
    for folder in ("live", "saved"):
        png = tmp_path / folder / "throughput-sdpa-float32-1thr.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no GPU backend ran" in err


def test_bench_plot_writes_svg_on_request(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.json"
    assert main(TINY + ["--json", str(path)]) == 0
    assert main(["bench", "plot", str(path), "--out", str(tmp_path / "svg"), "--format", "svg"]) == 0
    svg = (tmp_path / "svg" / "throughput-sdpa-float32-1thr.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_gpu_speedup_plot_pairs_each_gpu_backend_with_its_cpu_peer(tmp_path):
    pytest.importorskip("matplotlib")

    def rec(backend, device, median_us, T):
        return {"type": "case", "op": "sdpa", "case": f"enc B=1 H=1 T={T} D=64", "name": "enc", "series": "enc D=64",
                "seq_len": T, "dtype": "float32", "threads": 1, "backend": backend, "device": device,
                "status": "ok", "median_us": median_us, "gflops": 1e3 / median_us}

    records = [rec("attnkit", "cpu", 100.0, 512), rec("attnkit-cuda", "cuda", 10.0, 512),
               rec("attnkit", "cpu", 400.0, 1024), rec("attnkit-cuda", "cuda", 20.0, 1024)]
    paths, notes = write_plots(records, tmp_path)
    assert sorted(p.name for p in paths) == ["gpu-speedup-sdpa-float32.png", "throughput-sdpa-float32-1thr.png"]
    assert notes == []


def test_bench_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.json"
    assert main(TINY + ["--json", str(path)]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "plot", str(path), "--out", str(tmp_path / "p")]) == 2
    assert main(TINY + ["--plot", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("need matplotlib: pip install matplotlib") == 2


# ---- Ctrl-C and missing peers -----------------------------------------------------------------------


def test_ctrl_c_prints_and_keeps_what_was_measured(tmp_path, capsys, monkeypatch):
    def interrupted(self, case, copies, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(NumpyCPU, "prepare", interrupted)
    path = tmp_path / "run.json"
    rc = main(TINY + ["--baseline", "attnkit", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 130
    assert "| tiny B=1 H=1 T=8 D=8" in out and "**Interrupted**: 1 case(s) measured" in out
    records = read_lines(path)
    assert [r["backend"] for r in records if r["type"] == "case"] == ["attnkit"]
    assert records[-1]["type"] == "footer" and records[-1]["interrupted"] is True
    assert attnkit.get_num_threads() >= 1


def test_bench_without_torch_skips_it_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, find_spec says absent
    path = tmp_path / "run.json"
    rc = main(FAST + ["--quick", "--ops", "espnet-step", "--backends", "attnkit,numpy,torch", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "torch: skipped, not installed" in out and "x vs numpy" in out
    assert {r["backend"] for r in read_lines(path) if r["type"] == "case"} == {"numpy", "attnkit"}


def test_onnxruntime_peer_computes_the_same_attention():
    """The ONNX Runtime backend's graph (masks for key lengths and causal included) gives
    attnkit's numbers, so its timings compare like with like."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from attnkit.bench import sdpa_case
    from attnkit.bench.backends import OnnxRuntimeCPU

    backend = OnnxRuntimeCPU()
    backend.set_threads(1)
    for case in (sdpa_case("enc", 2, 2, 9, 13, 8), sdpa_case("enc", 2, 2, 9, 13, 8, lengths=True),
                 sdpa_case("enc", 2, 2, 13, 13, 8, causal=True, lengths=True)):
        c = case.make_inputs(np.random.default_rng(0))
        (got,) = backend.prepare(case, [c], None)[0]()
        ref = attnkit.scaled_dot_product_attention(c["q"], c["k"], c["v"], key_lengths=c["key_lengths"],
                                                   causal=case.causal)
        np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-5, err_msg=case.label)



def test_rounds_alternate_the_backends_and_pool_their_samples(tmp_path, capsys, monkeypatch):
    from attnkit.bench import runner

    order = []
    real_measure = runner.measure

    def recording(calls, **kw):
        order.append(kw["budget_s"])
        return real_measure(calls, **kw)

    monkeypatch.setattr(runner, "measure", recording)
    monkeypatch.setattr(runner, "IDLE_GAP_S", 0.0)
    prepared = []
    for cls in (AttnkitCPU, NumpyCPU):
        real_prepare = cls.prepare
        monkeypatch.setattr(cls, "prepare",
                            lambda self, *a, real=real_prepare: prepared.append(self.name) or real(self, *a))
    path = tmp_path / "run.json"
    rc = main(TINY + ["--rounds", "3", "--repeats", "6", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "Timing: 3 rounds per case" in out
    assert sorted(prepared) == ["attnkit", "numpy"]  # set up once, measured three times
    assert order == [pytest.approx(0.02 / 3)] * 6
    records = read_lines(path)
    assert records[0]["rounds"] == 3
    cases = [r for r in records if r["type"] == "case"]
    assert [c["backend"] for c in cases] == ["numpy", "attnkit"]
    for c in cases:
        assert c["rounds"] == 3 and c["samples"] >= 3 and c["min_us"] <= c["median_us"] <= c["max_us"]
    assert cases[1]["speedup"] == pytest.approx(cases[0]["median_us"] / cases[1]["median_us"])


def test_pooled_timing_takes_every_round_s_samples():
    from attnkit.bench.timing import Timing, pooled

    a = Timing(2.0, 1.5, 2.5, 1.0, 3.0, 3, 10, 2, 0.1, (1.0, 2.0, 3.0))
    b = Timing(10.0, 10.0, 10.0, 10.0, 10.0, 1, 4, 1, 0.2, (10.0,))
    p = pooled([a, b])
    assert p.values_us == (1.0, 2.0, 3.0, 10.0) and p.samples == 4
    assert p.median_us == 2.5 and p.min_us == 1.0 and p.max_us == 10.0
    assert p.calls_per_sample == 10 and p.warmup_calls == 3
    with pytest.raises(ValueError):
        pooled([])


def test_ctc_prefix_peers_compute_attnkit_scores(tmp_path, capsys):
    """The ctc-prefix op's NumPy peer (and ESPnet's CTCPrefixScoreTH where installed) gives the
    scores attnkit's timed call gives, and the op runs through the command with its records."""
    from attnkit.bench import ctc_prefix
    from attnkit.bench.cases import CtcPrefixCase

    case = CtcPrefixCase(2, 3, 80, scored=5, vocab=12)
    c = case.make_inputs(np.random.default_rng(0))
    want, _ = ctc_prefix.attnkit_calls(case, [c])[0]()
    np.testing.assert_allclose(ctc_prefix.numpy_calls(case, [c])[0](), want, rtol=1e-5, atol=1e-4)
    if importlib.util.find_spec("espnet") is not None and importlib.util.find_spec("torch") is not None:
        import torch

        got, _ = ctc_prefix.torch_calls(torch, case, [c])[0]()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)
    path = tmp_path / "run.json"
    assert main(FAST + ["--ops", "ctc-prefix", "--case", "N=10 T=200", "--backends", "attnkit,numpy",
                        "--json", str(path)]) == 0
    records = [r for r in read_lines(path) if r["type"] == "case"]
    assert {r["backend"] for r in records} == {"attnkit", "numpy"}
    assert all(r["status"] == "ok" and r["op"] == "ctc-prefix" and r["seq_len"] == 200 for r in records)
    assert "| ctc-prefix | CTC N=10 T=200 S=15 V=500" in capsys.readouterr().out
