"""Threads (reliability, issue 8): every kernel releases the GIL; the same calls from 8 Python
threads at once give the serial results bit for bit; CPU results are bitwise reproducible for a
given thread count. (tests/test_runtime.py has the plain SDPA case.)"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import attnkit
from test_espnet_family import ALL, D, make


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    before = attnkit.get_num_threads()
    yield attnkit.set_num_threads
    attnkit.set_num_threads(before)


def espnet_run(cls, seed):
    """Three steps of ``cls`` on a padded batch with a beam of rows: every output array."""
    m, _ = make(cls, dtype=np.float32)
    rng = np.random.default_rng(seed)
    lengths = [7, 23, 16]
    enc = rng.standard_normal((3, 23, D["E"])).astype(np.float32)
    prep = m.prepare(enc, lengths)
    rows = np.array([0, 0, 1, 1, 1, 2])
    extra = {"AttForwardTA": {"out_prev": rng.standard_normal((6, D["O"])).astype(np.float32)},
             "GDCAttLoc": {"trans_token": rng.uniform(size=(6, 23)).astype(np.float32)}}.get(cls, {})
    state, outs = None, []
    for _ in range(3):
        dz = rng.standard_normal((6, D["Dz"])).astype(np.float32)
        out = m.step(prep, dz, state, rows=rows, **extra)
        state = out.state
        outs += [out.context, out.weights]
    return outs


def sdpa_run(seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 3, 70, 24)).astype(np.float32)
    k = rng.standard_normal((2, 3, 600, 24)).astype(np.float32)
    v = rng.standard_normal((2, 3, 600, 16)).astype(np.float32)
    lengths = [600, 321]
    return [*attnkit.scaled_dot_product_attention(q, k, v, key_lengths=lengths, causal=True, return_weights=True),
            *attnkit.scaled_dot_product_attention(q[:, :1, :1], k[:, :1], v[:, :1], key_lengths=lengths,
                                                  return_weights=True)]


def mha_run(seed):
    rng = np.random.default_rng(seed)
    E = 32
    params = {"in_proj_weight": rng.standard_normal((3 * E, E)).astype(np.float32) / 6,
              "out_proj.weight": rng.standard_normal((E, E)).astype(np.float32) / 6}
    x = rng.standard_normal((2, 50, E)).astype(np.float32)
    return list(attnkit.multi_head_attention(x, x, x, params, num_heads=4, return_weights=True))


RUNS = [(f"espnet.{c}", lambda seed, c=c: espnet_run(c, seed)) for c in ALL] + [("sdpa", sdpa_run), ("mha", mha_run)]


def test_eight_python_threads_get_the_serial_results():
    """Every ESPnet class, SDPA (tiled and decode) and multi-head attention, all at once from 8
    threads (while one caller holds attnkit's pool, the others run inline on their own thread:
    the same split, so the same bits)."""
    jobs = [(name, fn, seed) for name, fn in RUNS for seed in (0, 1)]
    serial = [fn(seed) for _, fn, seed in jobs]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda job: job[1](job[2]), jobs * 2))
    for i, got in enumerate(parallel):
        want = serial[i % len(jobs)]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=jobs[i % len(jobs)][0])


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_results_are_bitwise_reproducible_for_a_thread_count(threads, n):
    threads(n)
    for name, fn in [("sdpa", sdpa_run), ("espnet.AttLoc", lambda s: espnet_run("AttLoc", s)),
                     ("espnet.AttMultiHeadLoc", lambda s: espnet_run("AttMultiHeadLoc", s))]:
        first, again = fn(3), fn(3)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, {n} threads")


def test_parts_run_by_whichever_thread_is_free_give_the_same_bits(threads):
    """The pool's parts are claimed by whichever of its threads is free, the caller included, so
    a worker kept off its core by another busy thread leaves its part to the caller. Two
    threads spinning on NumPy matmuls (OpenBLAS keeps its own threads spinning between calls)
    and a pool of 3 on this 2-core machine: who runs which part changes from call to call, the
    bits must not."""
    threads(3)
    want = {name: fn(4) for name, fn in RUNS}
    stop = threading.Event()

    def busy():
        a = np.ones((96, 96), np.float32)
        while not stop.is_set():
            a @ a

    others = [threading.Thread(target=busy) for _ in range(2)]
    for t in others:
        t.start()
    try:
        for _ in range(3):
            for name, fn in RUNS:
                for a, b in zip(fn(4), want[name]):
                    np.testing.assert_array_equal(a, b, err_msg=name)
    finally:
        stop.set()
        for t in others:
            t.join()


def longest_stall(work) -> tuple[float, float]:
    """Runs work() on another thread while this one ticks; returns (work's duration, longest gap
    between ticks). A call that keeps the GIL stalls the ticking for its whole duration."""
    done = threading.Event()
    took = []

    def worker():
        t0 = time.perf_counter()
        work()
        took.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=worker)
    last, gap = time.perf_counter(), 0.0
    t.start()
    while not done.is_set():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    t.join()
    return took[0], gap


def kernel_call(kernel: str, size: int):
    """One call of ``kernel`` whose cost grows linearly with ``size``."""
    rng = np.random.default_rng(0)
    if kernel == "sdpa":
        q = rng.standard_normal((size, 1, 1000, 64)).astype(np.float32)
        return lambda: attnkit.scaled_dot_product_attention(q, q, q)
    if kernel == "additive_step":
        m = attnkit.espnet.AttLoc(64, 64, 256, 10, 50)
        prep = m.prepare(rng.standard_normal((1, 3000, 64)).astype(np.float32), [3000])
        rows = np.zeros(10 * size, np.int64)
        return lambda: m.step(prep, None, None, rows=rows)
    from attnkit import _core

    x, w = rng.standard_normal((16 * size, 2048)), rng.standard_normal((3072, 2048))
    out = np.empty((16 * size, 3072))
    return lambda: _core.linear(x, w, None, out)


@pytest.mark.parametrize("kernel", ["sdpa", "additive_step", "linear"])
def test_kernels_release_the_gil(threads, kernel):
    threads(1)  # the kernel on one core, the ticking thread on the other
    size = 1
    while True:  # grow the call until it takes 0.1 s or more on this machine
        work = kernel_call(kernel, size)
        t0 = time.perf_counter()
        work()
        if time.perf_counter() - t0 >= 0.1 or size >= 64:
            break
        size *= 2
    duration, gap = longest_stall(work)
    assert gap < 0.5 * duration, f"{kernel}: the GIL was held for {gap:.3f} of {duration:.3f} s"


@pytest.mark.parametrize("packed", [False, True])
# A = 32: one chunk of outputs, so the rows are cut across threads (blocks of 48 rows); A = 200:
# chunks only unpacked; packed, tasks of 48 rows x all outputs from 4 such units per thread (N =
# 300: at 1 thread only; N = 1001: at 1-5 threads).
@pytest.mark.parametrize("N,A", [(1000, 32), (97, 20), (300, 200), (1001, 70)])
def test_linear_bits_do_not_depend_on_the_thread_count(threads, packed, N, A):
    from attnkit._linear import PackedWeight, linear

    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((N, 288)).astype(np.float32), rng.standard_normal((A, 288)).astype(np.float32)
    weight = PackedWeight(w) if packed else w
    outs = []
    for count in (1, 2, 3, 5):
        threads(count)
        outs.append(linear(x, weight))
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])
    np.testing.assert_allclose(outs[0], x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"), reason="needs fork and /proc")
def test_a_forked_child_gets_a_pool_of_its_own(threads):
    """fork() copies only the calling thread: the child must not keep the parent's pool (whose
    workers it does not have: every part ran on the caller, one thread) and must exit cleanly,
    also with a grandchild (multiprocessing's "fork" workers)."""
    threads(2)
    q = np.random.default_rng(0).standard_normal((8, 4, 256, 32)).astype(np.float32)
    want = attnkit.scaled_dot_product_attention(q, q, q)  # the parent's pool runs
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report (same bits, threads after a call, grandchild's report), then exit
        try:
            os.close(read)
            same = np.array_equal(attnkit.scaled_dot_product_attention(q, q, q), want)
            report = f"{int(same)} {len(os.listdir('/proc/self/task'))}"
            grandchild = os.fork()
            if grandchild == 0:
                same = np.array_equal(attnkit.scaled_dot_product_attention(q, q, q), want)
                os._exit(0 if same and len(os.listdir("/proc/self/task")) >= 2 else 3)
            _, status = os.waitpid(grandchild, 0)
            os.write(write, f"{report} {os.waitstatus_to_exitcode(status)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    same, task_count, grandchild = report.split()
    assert same == "1", "the child's result differs from the parent's"
    assert int(task_count) >= 2, f"the child computed on {task_count} thread(s): no pool worker of its own"
    assert grandchild == "0", f"the grandchild failed (exit code {grandchild})"
