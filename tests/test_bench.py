"""unet-fast bench: alternating comparisons, the table and the JSON file."""

import json
import time

import pytest
import torch

from unet_fast import bench


def test_compare_times_both_sides_and_reports_the_ratio():
    result = bench.compare("sleep", lambda: time.sleep(0.002), lambda: time.sleep(0.006), rounds=3,
                           device=torch.device("cpu"))
    assert 2 <= result.ours_ms < result.reference_ms
    assert result.speedup == pytest.approx(result.reference_ms / result.ours_ms)


def test_peak_memory_sees_a_temporary():
    peak = bench.peak_memory_mb(lambda: torch.ones(1024, 1024).sum(), torch.device("cpu"))
    assert 3.9 <= peak <= 8.1  # one 4 MiB temporary


def test_table_and_atomic_json(tmp_path):
    results = [bench.Comparison("op", 1.0, 3.0, 1.5, 2.5)]
    table = bench.format_table(results)
    assert "op" in table and "3.00x" in table and "1.5/2.5" in table
    path = tmp_path / "bench.json"
    bench.write_json(results, str(path))
    saved = json.loads(path.read_text())
    assert saved["results"][0]["speedup"] == 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
