"""Runtime configuration: ISA selection, threads, show_config, the CUDA probe."""
import os
import subprocess
import sys

import numpy as np
import pytest

import attnkit
from attnkit import _core
from conftest import UNSUPPORTED_ISAS


def test_show_config_reports_the_build():
    cfg = attnkit.show_config()
    assert cfg["version"] == attnkit.__version__
    assert "portable" in cfg["cpu_isa_compiled"]
    assert cfg["cpu_isa_active"] in cfg["cpu_isa_supported"]
    assert cfg["num_threads"] >= 1
    assert isinstance(cfg["cuda_built"], bool)
    assert cfg["cuda_devices"] >= 0  # a CUDA build without a GPU or driver says 0, never raises


def test_set_cpu_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="cpu isa must be one of 'portable', 'avx2', 'avx512', got 'sse9'"):
        attnkit.set_cpu_isa("sse9")
    for name in UNSUPPORTED_ISAS:
        with pytest.raises(attnkit.UnsupportedError, match=f"cpu isa '{name}' is not supported by this CPU"):
            attnkit.set_cpu_isa(name)
    assert issubclass(attnkit.UnsupportedError, NotImplementedError)


def run_python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60)


def test_environment_forces_a_lower_isa_and_refuses_a_higher_one():
    r = run_python("import attnkit; print(attnkit.get_cpu_isa())", ATTNKIT_CPU_ISA="portable")
    assert r.returncode == 0 and r.stdout.strip() == "portable", r.stderr
    for name in UNSUPPORTED_ISAS:
        r = run_python("import attnkit", ATTNKIT_CPU_ISA=name)
        assert r.returncode != 0 and "not supported by this CPU" in r.stderr


def test_thread_count_from_environment_and_setter():
    r = run_python("import attnkit; print(attnkit.get_num_threads())", ATTNKIT_NUM_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr
    before = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(1)
        assert attnkit.get_num_threads() == 1
    finally:
        attnkit.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        attnkit.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        attnkit.set_num_threads(2.0)


def test_concurrent_callers_get_the_serial_results(rng):
    """Eight Python threads at once (the GIL is released inside): results equal the serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [tuple(rng.standard_normal(s).astype(np.float32) for s in ((2, 2, t, 32), (2, 2, 80, 32), (2, 2, 80, 32)))
             for t in (1, 3, 64, 100)] * 4
    serial = [attnkit.scaled_dot_product_attention(*c) for c in cases]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda c: attnkit.scaled_dot_product_attention(*c), cases))
    for a, b in zip(serial, parallel):
        assert np.array_equal(a, b)
