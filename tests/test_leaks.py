"""No leaks (reliability, issue 8): resident memory stays flat over a long loop of calls,
including calls that raise, and the extension reports no nanobind reference leaks at exit."""
import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import attnkit
from attnkit import espnet as ek

STATM = "/proc/self/statm"


def resident_bytes() -> int:
    with open(STATM) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_round(rng, att, prepared):
    """A mix of successful and raising calls through every front door."""
    q = rng.standard_normal((2, 2, 5, 16)).astype(np.float32)
    k = rng.standard_normal((2, 2, 40, 16)).astype(np.float32)
    attnkit.scaled_dot_product_attention(q, k, k, key_lengths=[40, 7], causal=True, return_weights=True)
    attnkit.scaled_dot_product_attention(q[:, :, :1], k, k[..., ::-1], mask=np.ones((1, 40), bool))
    bad_calls = [
        lambda: attnkit.scaled_dot_product_attention(q, k, k, key_lengths=[41, 0]),
        lambda: attnkit.scaled_dot_product_attention(q, k.astype(np.float64), k),
        lambda: attnkit.scaled_dot_product_attention(q, k, k, out=np.empty((2, 2, 5, 16), np.float32)[..., ::2]),
        lambda: attnkit.scaled_dot_product_attention(q, k, k, scale=float("nan")),
        lambda: attnkit.scaled_dot_product_attention(np.broadcast_to(q[:1, :1, :1, :1], (1, 1, 3, 2**46)), q, q),
        lambda: att.step(prepared, np.zeros((3, 5), np.float32), None),
        lambda: att.step(prepared, None, np.zeros((2, 3), np.float32)),
        lambda: att.prepare(np.zeros((2, 4, 7), np.float32), [4, 9]),
        lambda: attnkit.set_num_threads(0),
    ]
    for bad in bad_calls:
        try:
            bad()
        except (TypeError, ValueError, MemoryError, NotImplementedError):
            pass
        else:
            raise AssertionError("a bad call was accepted")
    out = att.step(prepared, rng.standard_normal((2, 5)).astype(np.float32), None, rows=[0, 1])
    att.step(prepared, None, out.state)


@pytest.mark.skipif(not os.path.exists(STATM), reason="needs /proc/self/statm (Linux)")
def test_resident_memory_stays_flat_over_many_calls():
    rng = np.random.default_rng(0)
    att = ek.AttLoc(7, 5, 8, 3, 4, seed=0)
    prepared = att.prepare(rng.standard_normal((2, 12, 7)).astype(np.float32), [12, 5])
    for _ in range(200):  # warm up: allocator pools, scratch arenas, NumPy caches
        one_round(rng, att, prepared)
    gc.collect()
    before = resident_bytes()
    rounds, start = 0, time.perf_counter()
    while rounds < 2000 and time.perf_counter() - start < 10:
        one_round(rng, att, prepared)
        rounds += 1
    gc.collect()
    grown = resident_bytes() - before
    # Each round makes 15 calls; leaking even 64 bytes per call would add up to 1 MiB or more.
    assert rounds >= 300, f"only {rounds} rounds in the time allowed"
    assert grown < 2**20, f"resident memory grew by {grown / 2**20:.2f} MiB in {rounds} rounds"


def test_no_nanobind_leaks_at_exit():
    code = (
        "import numpy as np, attnkit\n"
        "from attnkit import espnet as ek\n"
        "q = np.ones((1, 2, 3, 4), np.float32)\n"
        "attnkit.scaled_dot_product_attention(q, q, q, return_weights=True)\n"
        "try:\n"
        "    attnkit.scaled_dot_product_attention(q, q, q.astype(np.float64))\n"
        "except TypeError:\n"
        "    pass\n"
        "m = ek.initial_att('location', 4, 3, 1, 5, 1, 2, 3)\n"
        "m(np.ones((1, 3, 4), np.float32), [3], np.ones((1, 3), np.float32), None)\n"
        "print(attnkit.show_config()['version'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leak" not in r.stderr.lower(), r.stderr
