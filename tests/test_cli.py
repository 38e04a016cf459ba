"""The unet-fast command line."""

import json

import numpy as np
import pytest
import tifffile

from unet_fast import cli, data, files
from unet_fast.checkpoint import load_checkpoint

TINY = ["--widths", "4,8,16", "--tile", "60", "--val-every", "0", "--checkpoint-every", "0"]


@pytest.mark.parametrize("command", ["train", "predict", "demo", "bench", "tune"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: unet-fast " + command in capsys.readouterr().out


def _folder_dataset(root, count=3, size=72):
    (root / "images").mkdir(parents=True)
    for index in range(count):
        sample = data.synthetic_cells(size, size, seed=index)
        files.write_labels(root / "masks" / f"cell{index}.tif", sample.labels)
        tifffile.imwrite(root / "images" / f"cell{index}.tif", (sample.image.clip(0, 1) * 4000).astype(np.uint16))


def test_train_on_a_folder_then_predict_it(tmp_path, capsys):
    _folder_dataset(tmp_path / "data")
    cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "3",
              "--val-every", "3", "--widths", "4,8,16", "--tile", "60"])
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "validation IoU" in out
    checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    assert checkpoint["config"].widths == (4, 8, 16) and checkpoint["config"].optimizer == "sgd"
    cli.main(["predict", "--checkpoint", str(tmp_path / "run" / "model.pt"), str(tmp_path / "data" / "images"),
              "--out", str(tmp_path / "masks")])
    assert "wrote 6 files" in capsys.readouterr().out
    assert files.read_frames(tmp_path / "masks" / "cell0.tif").shape == (1, 72, 72)


def test_train_resumes_with_the_saved_configuration(tmp_path, capsys):
    cli.main(["train", "--out", str(tmp_path), "--steps", "1", "--synthetic-images", "1", "--synthetic-size", "64",
              "--optimizer", "adam", *TINY])
    with pytest.raises(FileExistsError, match="pass --resume"):
        cli.main(["train", "--out", str(tmp_path), "--steps", "2"])
    cli.main(["train", "--out", str(tmp_path), "--steps", "2", "--resume"])
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 2 and checkpoint["config"].optimizer == "adam"
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        cli.main(["train", "--out", str(tmp_path / "elsewhere"), "--resume"])


def test_train_rejects_a_tile_the_network_cannot_take(tmp_path):
    with pytest.raises(ValueError, match="tile 61 does not fit this U-Net.*Nearest valid sizes: 60 and 64"):
        cli.main(["train", "--out", str(tmp_path), "--widths", "4,8,16", "--tile", "61"])


def test_demo_trains_segments_and_reports(tmp_path, capsys):
    cli.main(["demo", "--out", str(tmp_path), "--steps", "10", "--size", "300", "--tile", "252"])
    out = capsys.readouterr().out
    for expected in ("U-Net", "Otsu threshold", "IoU", "Rand error", "segmented a 300x300 image"):
        assert expected in out
    assert {"model.pt", "overlay.png", "labels.tif", "training_curve.png"} <= {p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["steps"] == 10 and set(summary["unet"]) == {"iou", "dice", "pixel_error", "rand_error"}
    assert 0 < summary["train_seconds"] < summary["total_seconds"]
    assert files.read_frames(tmp_path / "labels.tif").shape == (1, 300, 300)


def test_bench_prints_the_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    cli.main(["bench", "--size", "188", "--rounds", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "UNet training step, 188x188" in out and "crop_concat" in out and "bf16 autocast vs our fp32" in out
    assert "fresh training processes" in out and "peak resident memory" in out
    saved = json.loads(path.read_text())
    assert len(saved["results"]) == 5
    assert [p["model"] for p in saved["training_processes"]] == ["unet_fast", "reference"]


def test_bench_refuses_an_invalid_size():
    with pytest.raises(ValueError, match="--size 190 does not fit.*Nearest valid sizes: 188 and 204"):
        cli.main(["bench", "--size", "190"])


def test_tune_measures_a_network_and_caches_its_choices(tmp_path, capsys, monkeypatch):
    from unet_fast import tuning

    monkeypatch.setenv("UNET_FAST_TUNE", "1")
    monkeypatch.setenv("UNET_FAST_CACHE_DIR", str(tmp_path))
    tuning.forget()
    try:
        cli.main(["tune", "--widths", "4,8,16", "--size", "60"])
        out = capsys.readouterr().out
        assert "forward" in out and "weight_grad" in out and "measured ms" in out
        assert "settled" in out and str(tuning.cache_path()) in out and tuning.cache_path().exists()
    finally:
        tuning.forget()


def test_tune_refuses_an_invalid_size():
    with pytest.raises(ValueError, match="--size 61 does not fit"):
        cli.main(["tune", "--widths", "4,8,16", "--size", "61"])
