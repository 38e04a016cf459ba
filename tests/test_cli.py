"""The unet-fast command line."""

import json

import pytest

from unet_fast import cli


def test_demo_runs_and_reports_matching_outputs(capsys):
    cli.main(["demo", "--size", "188"])
    out = capsys.readouterr().out
    assert "output (1, 2, 4, 4)" in out
    difference = float(out.split("largest difference between the two outputs: ")[1].split()[0])
    assert difference < 1e-4  # the fused convolutions sum in another order than the reference


def test_bench_prints_the_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    cli.main(["bench", "--size", "188", "--rounds", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "UNet training step, 188x188" in out and "crop_concat" in out
    assert len(json.loads(path.read_text())["results"]) == 4


def test_bench_refuses_an_invalid_size():
    with pytest.raises(ValueError, match="--size 190 does not fit.*Nearest valid sizes: 188 and 204"):
        cli.main(["bench", "--size", "190"])
