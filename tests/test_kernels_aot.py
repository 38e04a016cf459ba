"""Every Triton kernel configuration compiles ahead of time for sm_80 and sm_90 without
register spills (no GPU needed; a subprocess, since this process runs the interpreter)."""

import os
import subprocess
import sys

import pytest

from unet_fast.kernels import aot


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "unet_fast.kernels.aot"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:-1]]
    compiled = {(row[0], row[1]) for row in rows}
    kernels = {kernel.__name__ for module in aot.MODULES for kernel, _, _ in module.aot_configurations()}
    assert compiled == {(name, f"sm_{arch}") for name in kernels for arch in aot.ARCHITECTURES}
    assert all(int(row[4]) == 0 for row in rows)


def test_refuses_to_run_under_the_interpreter():
    if not aot.INTERPRETED:
        pytest.skip("this process runs compiled kernels")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot.compile_all()
