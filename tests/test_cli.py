"""The `attnkit` command: `info`, and `bench` / `bench compare` on tiny configurations.

Benchmark figures are not checked (they are not tests); only that the commands run, print the
table, and write well-formed JSON lines. The bench runs are in-process with a 20 ms budget per
case and a 64^3 peak, so the whole file takes a few seconds.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import attnkit
from attnkit.bench.backends import numpy_sdpa
from attnkit.bench.cases import sdpa_case
from attnkit.cli import main

TINY_BENCH = ["bench", "--case", "tiny", "--max-seconds", "0.02", "--warmup-seconds", "0.01",
              "--peak-size", "64", "--threads", "1", "--no-progress"]


def run_cmd(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("attnkit") is None, reason="the attnkit console script is not on PATH")
def test_attnkit_info_prints_the_config():
    r = run_cmd("attnkit", "info")
    assert r.returncode == 0, r.stderr
    cfg = attnkit.show_config()
    assert "version:" in r.stdout and cfg["version"] in r.stdout
    assert "CPU ISA active:" in r.stdout and cfg["cpu_isa_active"] in r.stdout
    assert "CUDA devices:" in r.stdout


def test_python_m_attnkit_info_json():
    r = run_cmd(sys.executable, "-m", "attnkit", "info", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    cfg = attnkit.show_config()
    assert set(got) == set(cfg)
    for key in ("version", "cpu_isa_compiled", "cpu_isa_supported", "cuda_built", "cuda_devices"):
        assert got[key] == cfg[key]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_bench_tiny_writes_json_lines(tmp_path, capsys):
    path = tmp_path / "a.json"
    rc = main(TINY_BENCH + ["--backends", "attnkit,numpy,cupy", "--isa", "portable", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| tiny B=1 H=1 T=8 D=8" in out and "attnkit[portable]" in out and "x vs numpy" in out
    assert "cupy: skipped" in out  # a missing peer is a note, never a failure

    records = read_lines(path)
    header, peak, cases, footer = records[0], records[1], records[2:-1], records[-1]
    assert header["type"] == "header" and header["attnkit"]["version"] == attnkit.__version__
    assert header["threads"] == [1] and header["cpu_model"] and "numpy" in header["versions"]
    assert header["baseline"] == "numpy" and header["argv"][0] == "bench"
    assert peak["type"] == "peak" and peak["threads"] == 1 and peak["gflops"] > 0
    assert [c["backend"] for c in cases] == ["numpy", "attnkit[portable]"]  # baseline first
    for c in cases:
        assert c["type"] == "case" and c["status"] == "ok" and c["threads"] == 1
        assert c["case"] == "tiny B=1 H=1 T=8 D=8" and c["shape"]["D"] == 8
        assert 0 < c["min_us"] <= c["median_us"] <= c["max_us"] and c["samples"] >= 1
        assert c["flops"] == 4 * 8 * 8 * 8 and c["gflops"] > 0 and c["speedup"] > 0
    assert footer["type"] == "footer" and footer["interrupted"] is False
    assert attnkit.get_cpu_isa() in attnkit.show_config()["cpu_isa_supported"]


def test_bench_compare_two_runs(tmp_path, capsys):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p in paths:
        assert main(TINY_BENCH + ["--backends", "attnkit,numpy", "--json", str(p)]) == 0
    capsys.readouterr()
    assert main(["bench", "compare", str(paths[0]), str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "speed-up B/A" in out
    assert out.count("| tiny B=1 H=1 T=8 D=8") == 2
    assert "attnkit: geometric mean speed-up" in out


def test_bench_compare_refuses_a_file_that_is_not_a_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    assert main(["bench", "compare", str(bad), str(bad)]) == 2
    assert "line 1 must be JSON" in capsys.readouterr().err


def test_bench_rejects_bad_options(capsys):
    for argv in (["bench", "--threads", "0"], ["bench", "--backends", "nope"], ["bench", "--dtype", "int8"],
                 ["bench", "--rounds", "0"], ["bench", "--rounds", "two"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "must be among" in err and "--rounds: must be >= 1, got '0'" in err and "must be an integer, got 'two'" in err


def test_bench_counts_useful_flops():
    assert sdpa_case("enc", 2, 3, 16, 16, 8).flops() == 4 * 2 * 3 * 16 * 16 * 8
    assert sdpa_case("enc", 1, 1, 16, 16, 8, causal=True).flops() == 4 * 8 * (16 * 17 // 2)
    case = sdpa_case("enc", 4, 1, 10, 10, 8, lengths=True)
    assert case.flops() == 4 * 8 * 10 * int(case.key_lengths().sum())
    lens = case.key_lengths()
    assert lens.min() >= 5 and lens.max() == 10 and not np.all(np.diff(lens) <= 0)  # unsorted


@pytest.mark.parametrize("lengths,causal", [(False, False), (True, False), (False, True), (True, True)])
def test_numpy_backend_computes_what_attnkit_computes(lengths, causal):
    case = sdpa_case("enc", 3, 2, 9, 13, 16, lengths=lengths, causal=causal, dtype="float64")
    x = case.make_inputs(np.random.default_rng(0))
    got = numpy_sdpa(x["q"], x["k"], x["v"], x["key_lengths"], causal)
    want = attnkit.scaled_dot_product_attention(x["q"], x["k"], x["v"], key_lengths=x["key_lengths"], causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
