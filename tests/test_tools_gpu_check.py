"""tools/gpu_check.sh and its report (tools/gpu_report.py). The whole script runs in CI as
`tools/gpu_check.sh --dry-run` (.ci/run); here, its parts that need no build."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "tools" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_unless_dry_run(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path / "report.md")],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "sees no CUDA device (--dry-run checks the script without one)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_tests_section_names_the_summary_and_each_failure(tmp_path):
    log = tmp_path / "tests.log"
    log.write_text("....F.\nFAILED tests/test_a.py::test_b - AssertionError\n"
                   "==== 1 failed, 5 passed in 3.20s ====\n")
    assert gpu_report.tests_summary(log) == ["- 1 failed, 5 passed in 3.20s",
                                             "  - `FAILED tests/test_a.py::test_b - AssertionError`"]
    log.write_text("....")  # cut off by the time limit
    assert "stopped early" in gpu_report.tests_summary(log)[0]


def test_the_tiles_each_convolution_autotuned_to_are_reported(monkeypatch):
    triton = pytest.importorskip("triton")
    from unet_fast.kernels import conv3x3

    autotuner = conv3x3._AUTOTUNED["conv3x3_forward_kernel", True]
    chosen = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3)
    monkeypatch.setattr(autotuner, "cache", {(148996, 64, 64, "torch.bfloat16"): chosen})
    tiles = conv3x3.autotuned_tiles()
    assert tiles == [{"kernel": "conv3x3_forward_kernel", "tensor_cores": True, "key": (148996, 64, 64, "torch.bfloat16"),
                      "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3}]
    assert gpu_report.tile_rows(tiles)[2] == ("| conv3x3_forward_kernel | yes | 148996, 64, 64, torch.bfloat16 | "
                                              "64 x 64 x 32 | 8 | 3 |")
    assert "does not autotune" in gpu_report.tile_rows([])[0]


def test_the_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    report = tmp_path / "report.md"
    report.write_text("an earlier report")

    def broken(*args, **kwargs):
        raise RuntimeError("a benchmark failed")

    monkeypatch.setattr(gpu_report.bench, "run", broken)
    with pytest.raises(RuntimeError, match="a benchmark failed"):
        gpu_report.main(["--report", str(report), "--tests-log", str(tmp_path / "none.log"), "--device", "cpu"])
    assert report.read_text() == "an earlier report"
    assert list(tmp_path.iterdir()) == [report]
