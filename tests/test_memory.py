"""The CPU buffer pool behind the C++ ops: reuse, accounting, release and the opt-out."""

import os
import subprocess
import sys

import pytest
import torch

from unet_fast import memory
from unet_fast.bench import peak_memory_mb
from unet_fast.ops import backends, conv3x3_bias_relu

pytestmark = pytest.mark.skipif(not backends.extension_loaded(), reason="the pool belongs to the C++ extension")

X = torch.randn(1, 16, 132, 132)
W = torch.randn(16, 16, 3, 3)  # an output of 1 MiB: pooled


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


def test_pooled_memory_counts_in_the_profiler():
    output_mb = X.shape[0] * 16 * 130 * 130 * 4 / 2**20
    assert peak_memory_mb(lambda: conv3x3_bias_relu(X, W, backend="cpu"), X.device) >= output_mb


def test_empty_gives_idle_blocks_back():
    conv3x3_bias_relu(X, W, backend="cpu")
    memory.empty_cpu_pool()
    assert memory.cpu_pool_stats().cached_bytes == 0


def test_environment_variable_turns_the_pool_off():
    code = ("import torch, unet_fast; from unet_fast import memory; "
            "unet_fast.ops.conv3x3_bias_relu(torch.randn(1, 16, 132, 132), torch.randn(16, 16, 3, 3), backend='cpu'); "
            "print(memory.cpu_pool_stats().cached_bytes)")
    env = {**os.environ, "UNET_FAST_CPU_POOL": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "0"
