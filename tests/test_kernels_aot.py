"""Every Triton kernel configuration compiles ahead of time for sm_80 and sm_90 without
register spills (no GPU needed; a subprocess, since this process runs the interpreter)."""

import os
import subprocess
import sys

import pytest

from unet_fast.kernels import aot, conv3x3


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "unet_fast.kernels.aot"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split(maxsplit=6) for line in result.stdout.splitlines()[1:-1]]
    compiled = {(row[0], row[1]) for row in rows}
    kernels = {configuration[0].__name__ for module in aot.MODULES for configuration in module.aot_configurations()}
    assert compiled == {(name, f"sm_{arch}") for name in kernels for arch in aot.ARCHITECTURES}
    assert all(int(row[4]) == 0 for row in rows)
    # The conv GEMMs run on tensor cores (warpgroup MMA on sm_90) for bf16 and TF32, and
    # on CUDA cores for full-precision fp32.
    conv = [row for row in rows if row[0].startswith("conv3x3")]
    for kernel, arch, _, _, _, matrix, config in conv:
        tensor_cores = "*bf16" in config or "PRECISION=tf32" in config
        expected = ("wgmma" if arch == "sm_90" else "mma") if tensor_cores else "-"
        assert matrix == expected, (kernel, arch, config)
    configurations = 2 * len(conv3x3.GPU_CONFIGS[True]) + len(conv3x3.GPU_CONFIGS[False])  # fp32 TF32, bf16; fp32
    assert len(conv) == configurations * 3 * 2 * len(aot.ARCHITECTURES)  # kernels, ReLU or not


def test_refuses_to_run_under_the_interpreter():
    if not aot.INTERPRETED:
        pytest.skip("this process runs compiled kernels")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot.compile_all()
