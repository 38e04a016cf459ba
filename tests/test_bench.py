"""unet-fast bench: alternating comparisons, the table and the JSON file, fresh training
processes measured as the OS sees them, and the spinning neighbour of the busy-core case."""

import json
import resource
import time

import pytest
import torch

from unet_fast import bench, tuning


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


@pytest.mark.parametrize("model", ["unet_fast", "reference"])
def test_a_fresh_training_process_reports_its_peak_resident_memory(model):
    process = bench.training_process(model, size=188, steps=2)
    assert len(process.step_seconds) == 2 and all(s > 0 for s in process.step_seconds)
    assert 100 < process.setup_mb < process.peak_mb < 4096
    assert process.steps_mb > 20  # a 188 step's activations and gradients are tens of MiB
    assert (process.pool_cached_mb > 0) == (model == "unet_fast")


def test_the_process_table_gives_both_ratios():
    ours = bench.TrainingProcess("unet_fast", 572, "fp32", peak_mb=800, setup_mb=500, step_seconds=[1.0])
    theirs = bench.TrainingProcess("reference", 572, "fp32", peak_mb=1000, setup_mb=500, step_seconds=[2.0])
    table = bench.format_processes(ours, theirs)
    assert "peak 0.80x" in table and "added by the steps 0.60x" in table


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_busy_core_spins_another_process_meanwhile():
    before = children_cpu_seconds()
    with bench.busy_core():
        time.sleep(0.5)
    assert children_cpu_seconds() - before > 0.5  # the spinner burnt a core for the whole time


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_compared_with_the_posts_bf16_where_onednn_runs_it(native, monkeypatch):
    monkeypatch.setattr(tuning, "onednn_native", lambda dtype: native)
    names = [name for name, _, _ in bench._comparisons(188, torch.device("cpu"))]
    assert "UNet step 188, bf16 autocast vs our fp32" in names
    assert ("UNet step 188, bf16 autocast, both" in names) == native
