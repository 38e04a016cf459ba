"""The CPU buffer pool behind the C++ ops: reuse, its bound, accounting, giving memory back to
the OS (on demand and when idle), fork safety and the opt-out. What the OS sees is read from
/proc in fresh processes, so earlier tests cannot blur it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from unet_fast import memory
from unet_fast.bench import peak_memory_mb
from unet_fast.ops import backends, conv3x3_bias_relu

pytestmark = pytest.mark.skipif(not backends.extension_loaded(), reason="the pool belongs to the C++ extension")

X = torch.randn(1, 16, 132, 132)
W = torch.randn(16, 16, 3, 3)  # an output of 1 MiB: pooled


def run_fresh(code: str, **env: str) -> dict:
    """Runs `code` in a fresh Python with the helpers below; returns the JSON it prints last."""
    prelude = textwrap.dedent("""
        import json, os, time, torch
        from unet_fast import memory
        from unet_fast.ops import conv3x3_bias_relu

        def rss_mb():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

        def fill_pool(outputs=24):
            # live outputs of 16 MiB each, then all freed into the pool
            x, w = torch.randn(1, 64, 258, 258), torch.randn(64, 64, 3, 3)
            kept = [conv3x3_bias_relu(x, w, backend="cpu") for _ in range(outputs)]
            del kept
    """)
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_not_grown():
    memory.empty_cpu_pool()
    conv3x3_bias_relu(X, W, backend="cpu")
    after_one = memory.cpu_pool_stats()
    for _ in range(5):
        conv3x3_bias_relu(X, W, backend="cpu")
    assert after_one.cached_bytes > 0
    assert memory.cpu_pool_stats().cached_bytes == after_one.cached_bytes


def test_live_outputs_do_not_share_memory():
    first = conv3x3_bias_relu(X, W, backend="cpu")
    expected = first.clone()
    second = conv3x3_bias_relu(X * 2, W, backend="cpu")
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first, expected)
    assert memory.cpu_pool_stats().in_use_bytes >= 2 * first.numel() * 4


def test_pool_never_holds_more_than_its_peak_in_use():
    memory.empty_cpu_pool()
    kept = []
    for side in (132, 260, 100, 300, 180, 260, 132, 300):  # sizes that do not fit each other's blocks
        x = torch.randn(1, 16, side, side)
        kept.append(conv3x3_bias_relu(x, W, backend="cpu"))
        if len(kept) > 2:
            kept.pop(0)
        stats = memory.cpu_pool_stats()
        assert stats.in_use_bytes + stats.cached_bytes <= stats.peak_in_use_bytes


def test_freed_pages_serve_requests_of_other_sizes():
    """A request larger than every idle block is assembled from their pages, and a smaller one
    cut from one: neither maps new memory, and the buffers hold the right values."""
    result = run_fresh("""
        import torch.nn.functional as F
        fill_pool()  # 16 MiB blocks, all idle
        x, w = torch.randn(1, 64, 516, 516), torch.randn(64, 64, 3, 3)  # a 64.5 MiB output
        before, rss = memory.cpu_pool_stats(), rss_mb()
        large = conv3x3_bias_relu(x, w, backend="cpu")
        small = conv3x3_bias_relu(x[:, :16, :132, :132], w[:16, :16], backend="cpu")  # 1 MiB
        during, grown = memory.cpu_pool_stats(), rss_mb() - rss
        close = all(((ours - F.relu(F.conv2d(a, b))).norm() / ours.norm()).item() < 1e-5  # fp32 rounding
                    for ours, a, b in ((large, x, w), (small, x[:, :16, :132, :132], w[:16, :16])))
        needed = large.nbytes + small.nbytes
        del large, small
        after = memory.cpu_pool_stats()
        print(json.dumps(dict(before=[before.in_use_bytes, before.cached_bytes, before.peak_in_use_bytes],
                              during=[during.in_use_bytes, during.cached_bytes, during.peak_in_use_bytes],
                              after=[after.in_use_bytes, after.cached_bytes, after.peak_in_use_bytes],
                              needed=needed, close=close, grown_mb=grown)))
    """, UNET_FAST_CPU_POOL_IDLE_S="1000")
    held = result["before"][1]
    assert result["before"][0] == 0 and held >= 300 * 2**20
    assert result["close"]
    assert result["during"][0] >= result["needed"]
    assert result["during"][0] + result["during"][1] == held  # no new pages
    assert result["during"][2] == result["before"][2]
    assert result["after"] == [0, held, result["before"][2]]
    # new pages for the outputs would be 65.5 MiB; torch and oneDNN took 6-19 MiB of their own
    assert result["grown_mb"] < result["needed"] / 2**20 / 2


def test_allocations_outside_the_ops_are_not_pooled():
    conv3x3_bias_relu(X, W, backend="cpu")
    before = memory.cpu_pool_stats()
    big = torch.empty(8 << 20)
    del big
    assert memory.cpu_pool_stats() == before


def test_pooled_cpu_allocations_pool_this_threads_large_allocations():
    conv3x3_bias_relu(X, W, backend="cpu")  # the pool in place
    before = memory.cpu_pool_stats().in_use_bytes
    with memory.pooled_cpu_allocations():
        with memory.pooled_cpu_allocations():
            inner = torch.empty(4 << 20)
        outer = torch.empty(4 << 20)  # still pooled: the inner block ended only itself
        assert memory.cpu_pool_stats().in_use_bytes >= before + inner.nbytes + outer.nbytes
    del inner, outer
    after = memory.cpu_pool_stats()
    assert after.in_use_bytes == before
    big = torch.empty(4 << 20)  # outside: glibc's
    assert memory.cpu_pool_stats() == after
    del big


def test_pooled_memory_counts_in_the_profiler():
    output_mb = X.shape[0] * 16 * 130 * 130 * 4 / 2**20
    assert peak_memory_mb(lambda: conv3x3_bias_relu(X, W, backend="cpu"), X.device) >= output_mb


def test_empty_gives_idle_blocks_back():
    conv3x3_bias_relu(X, W, backend="cpu")
    memory.empty_cpu_pool()
    assert memory.cpu_pool_stats().cached_bytes == 0


def test_the_os_gets_the_memory_back_when_emptied():
    result = run_fresh("""
        fill_pool()
        cached = memory.cpu_pool_stats().cached_bytes / 2**20
        full = rss_mb()
        memory.empty_cpu_pool()
        print(json.dumps(dict(cached=cached, full=full, emptied=rss_mb())))
    """, UNET_FAST_CPU_POOL_IDLE_S="1000")
    assert result["cached"] >= 300
    assert result["full"] - result["emptied"] >= 0.9 * result["cached"]


def test_an_idle_pool_gives_its_memory_back():
    result = run_fresh("""
        fill_pool()
        cached, full = memory.cpu_pool_stats().cached_bytes / 2**20, rss_mb()
        time.sleep(1.5)
        print(json.dumps(dict(cached=cached, full=full, idle=rss_mb(),
                              cached_after=memory.cpu_pool_stats().cached_bytes)))
    """, UNET_FAST_CPU_POOL_IDLE_S="0.3")
    assert result["cached"] >= 300
    assert result["cached_after"] == 0
    assert result["full"] - result["idle"] >= 0.9 * result["cached"]


def test_a_running_loop_gives_back_the_blocks_it_no_longer_uses():
    result = run_fresh("""
        fill_pool(2)  # two 16 MiB blocks, not needed again
        x, w = torch.randn(1, 16, 132, 132), torch.randn(16, 16, 3, 3)
        start = time.time()
        while time.time() - start < 1.5:  # a loop of 1 MiB outputs runs on
            conv3x3_bias_relu(x, w, backend="cpu")
        print(json.dumps(dict(cached=memory.cpu_pool_stats().cached_bytes / 2**20)))
    """, UNET_FAST_CPU_POOL_IDLE_S="0.5")
    assert 0 < result["cached"] < 16


def test_a_busy_pool_keeps_its_blocks():
    result = run_fresh("""
        memory.set_cpu_pool_idle_seconds(30)
        fill_pool()
        time.sleep(0.5)
        print(json.dumps(dict(cached=memory.cpu_pool_stats().cached_bytes)))
    """)
    assert result["cached"] > 0


@pytest.mark.parametrize("seconds", [-1, float("nan"), "2", True])
def test_idle_time_must_be_a_number_of_seconds(seconds):
    with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
        memory.set_cpu_pool_idle_seconds(seconds)


def test_bad_idle_time_in_the_environment_is_named():
    code = ("import torch; from unet_fast.ops import conv3x3_bias_relu; "
            "conv3x3_bias_relu(torch.randn(1, 16, 132, 132), torch.randn(16, 16, 3, 3), backend='cpu')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "UNET_FAST_CPU_POOL_IDLE_S": "soon"}, timeout=120)
    assert result.returncode != 0
    assert "UNET_FAST_CPU_POOL_IDLE_S must be a number of seconds >= 0, got 'soon'" in result.stderr


def test_fork_while_another_thread_uses_the_pool():
    """Children forked while a thread allocates from and frees to the pool (and its trimming
    thread gives every freed block back at once, waking often), by a thread that holds pooled
    tensors, run ops of their own and exit: no lock was inherited held, and no condition
    variable waits for a thread the child does not have. A child that hangs is ended by its
    alarm, and no more are forked. Each child runs on one thread, as DataLoader workers do:
    libgomp cannot start a parallel region in a child forked during one (stock F.conv2d hangs
    there)."""
    result = run_fresh("""
        import signal, threading
        x, w = torch.randn(1, 16, 132, 132), torch.randn(16, 16, 3, 3)
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                conv3x3_bias_relu(x, w, backend="cpu")

        def fork_until_one_fails(statuses):
            held = conv3x3_bias_relu(x, w, backend="cpu")  # this thread holds pooled memory
            while len(statuses) < 200 and not any(statuses):
                pid = os.fork()
                if pid == 0:
                    signal.alarm(20)
                    torch.set_num_threads(1)
                    ok = conv3x3_bias_relu(x, w, backend="cpu").shape == held.shape
                    os._exit(0 if ok else 1)
                statuses.append(os.waitpid(pid, 0)[1])

        worker = threading.Thread(target=churn)
        worker.start()
        statuses = []
        forker = threading.Thread(target=fork_until_one_fails, args=(statuses,))
        forker.start()
        forker.join()
        stop.set()
        worker.join()
        print(json.dumps(dict(statuses=statuses)))
    """, UNET_FAST_CPU_POOL_IDLE_S="0")
    assert result["statuses"] == [0] * 200


def test_environment_variable_turns_the_pool_off():
    result = run_fresh("""
        fill_pool(4)
        print(json.dumps(dict(cached=memory.cpu_pool_stats().cached_bytes)))
    """, UNET_FAST_CPU_POOL="0")
    assert result["cached"] == 0
