"""The unet-fast command line."""

import json
import math
import os
import re

import numpy as np
import pytest
import tifffile
import torch

from unet_fast import cli, data, files, tuning
from unet_fast.checkpoint import load_checkpoint

TINY = ["--widths", "4,8,16", "--tile", "60", "--val-every", "0", "--checkpoint-every", "0"]


def fails_with(argv, match, capsys):
    """A user's error: one line on stderr (after any progress bar), exit status 2, no traceback."""
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert last.startswith(f"unet-fast {argv[0]}: error: ") and re.search(match, last), err


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "export", "demo", "bench", "tune"])
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


def test_train_on_a_folder_then_predict_and_evaluate_it(tmp_path, capsys):
    _folder_dataset(tmp_path / "data")
    cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "3",
              "--val-every", "3", "--widths", "4,8,16", "--tile", "60"])
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "validation IoU" in out and "AP50" in out
    checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    assert checkpoint["config"].widths == (4, 8, 16) and checkpoint["config"].optimizer == "adam"
    cli.main(["predict", "--checkpoint", str(tmp_path / "run" / "model.pt"), str(tmp_path / "data" / "images"),
              "--out", str(tmp_path / "masks")])
    assert "wrote 6 files" in capsys.readouterr().out
    assert files.read_frames(tmp_path / "masks" / "cell0.tif").shape == (1, 72, 72)
    cli.main(["predict", "--checkpoint", str(tmp_path / "run" / "model.pt"), str(tmp_path / "data" / "images"),
              "--out", str(tmp_path / "components"), "--instances", "components"])
    capsys.readouterr()
    cli.main(["evaluate", "--pred", str(tmp_path / "components"), "--masks", str(tmp_path / "data" / "masks")])
    out = capsys.readouterr().out
    scored = [line.split()[0] for line in out.splitlines()[1:] if not line.startswith("left out")]
    left_out = [name for name in ("cell0", "cell1", "cell2") if name not in scored]  # masks without cells
    assert scored[-1] == "mean" and sorted(scored[:-1] + left_out) == ["cell0", "cell1", "cell2"]


def test_export_then_predict_with_the_package_and_the_onnx_file(tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnxruntime")
    _folder_dataset(tmp_path / "data", count=2)
    cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "2", *TINY])
    cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "package")])
    assert "rdf.yaml to" in capsys.readouterr().out
    images = str(tmp_path / "data" / "images")
    expected = None
    for option, network in (("--checkpoint", "run"), ("--model", "package/rdf.yaml"), ("--model", "package/model.onnx")):
        cli.main(["predict", images, option, str(tmp_path / network), "--out", str(tmp_path / "pred" / network)])
        labels = files.read_frames(tmp_path / "pred" / network / "cell0.tif")
        if expected is None:
            expected = labels
        np.testing.assert_array_equal(labels, expected)  # ids as well as the partition: the same logits
    fails_with(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "package")],
               "is not empty: choose an empty folder, or pass --force", capsys)
    fails_with(["export", "--checkpoint", str(tmp_path / "data"), "--out", str(tmp_path / "x")], "no checkpoint at",
               capsys)
    fails_with(["predict", images, "--model", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "y")],
               "expected a bioimage.io rdf.yaml or an .onnx file", capsys)
    fails_with(["predict", images, "--model", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "run"), "--out",
                str(tmp_path / "y")], "not allowed with argument", capsys)


def test_predict_a_large_image_block_by_block(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    cli.main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--synthetic-images", "1", "--synthetic-size",
              "64", *TINY])
    image = (data.synthetic_cells(150, 130, seed=1).image.clip(0, 2) * 1000).astype(np.uint16)
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, dtype=image.dtype)[:] = image
    run, zarr_image, labels = str(tmp_path / "run"), str(tmp_path / "image.zarr"), str(tmp_path / "labels.ome.zarr")
    cli.main(["predict", zarr_image, "--checkpoint", run, "--out", labels, "--tile", "60", "--block", "64",
              "--probabilities"])
    assert re.search(r"wrote .*labels.ome.zarr: \d+ objects in 1 frame, 9 blocks of 60 pixels, .* megapixels/s",
                     capsys.readouterr().out)
    assert zarr.open_group(labels, mode="r")["labels/cells/0"].shape == (1, 150, 130)
    fails_with(["predict", zarr_image, "--checkpoint", run, "--out", labels], "exists: choose another, or pass "
               "--overwrite", capsys)
    fails_with(["predict", zarr_image, "--checkpoint", run, "--out", str(tmp_path / "folder")],
               "a Zarr image is segmented into NAME.ome.zarr, NAME.zarr or NAME.tif", capsys)
    fails_with(["predict", zarr_image, "--checkpoint", run, "--out", str(tmp_path / "x.zarr"), "--instances",
                "watershed"], "--instances watershed: a large image's objects are the connected components", capsys)
    tifffile.imwrite(tmp_path / "small.tif", image)
    fails_with(["predict", str(tmp_path / "small.tif"), "--checkpoint", run, "--out", str(tmp_path / "f"),
                "--workers", "2"], "--workers: only for a large image", capsys)
    fails_with(["predict", zarr_image, zarr_image, "--checkpoint", run, "--out", str(tmp_path / "y.zarr")],
               "holds one image: give one input, not 2", capsys)


def test_train_resumes_with_the_saved_configuration(tmp_path, capsys):
    cli.main(["train", "--out", str(tmp_path), "--steps", "1", "--synthetic-images", "1", "--synthetic-size", "64",
              "--optimizer", "adam", *TINY])
    fails_with(["train", "--out", str(tmp_path), "--steps", "2"], "pass --resume", capsys)
    cli.main(["train", "--out", str(tmp_path), "--steps", "2", "--resume"])
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 2 and checkpoint["config"].optimizer == "adam"
    fails_with(["train", "--out", str(tmp_path / "elsewhere"), "--resume"], "--resume: no checkpoint", capsys)


def test_train_rejects_a_tile_the_network_cannot_take(tmp_path, capsys):
    fails_with(["train", "--out", str(tmp_path), "--widths", "4,8,16", "--tile", "61"],
               "tile 61 does not fit this U-Net.*Nearest valid sizes: 60 and 64", capsys)


def test_demo_trains_segments_and_reports(tmp_path, capsys):
    cli.main(["demo", "--out", str(tmp_path), "--steps", "10", "--size", "300", "--tile", "252"])
    out = capsys.readouterr().out
    for expected in ("U-Net", "Otsu threshold", "IoU", "Rand error", "AP50", "SEG", "segmented a 300x300 image"):
        assert expected in out
    assert {"model.pt", "overlay.png", "labels.tif", "training_curve.png"} <= {p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["steps"] == 10 and set(summary["unet"]) == {"iou", "dice", "pixel_error", "rand_error", "ap50",
                                                               "ap75", "ap90", "seg"}
    assert 0 < summary["train_seconds"] < summary["total_seconds"]
    assert files.read_frames(tmp_path / "labels.tif").shape == (1, 300, 300)


def test_bench_prints_the_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    cli.main(["bench", "--size", "188", "--rounds", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "UNet training step, 188x188" in out and "crop_concat" in out and "bf16 autocast vs our fp32" in out
    assert "fresh training processes" in out and "peak resident memory" in out
    saved = json.loads(path.read_text())
    assert len(saved["results"]) == (6 if tuning.onednn_native("bfloat16") else 5)  # bf16 vs the post's bf16
    assert [p["model"] for p in saved["training_processes"]] == ["unet_fast", "reference"]


def test_bench_refuses_an_invalid_size(capsys):
    fails_with(["bench", "--size", "190"], "--size 190 does not fit.*Nearest valid sizes: 188 and 204", capsys)


def test_tune_measures_a_network_and_caches_its_choices(tmp_path, capsys, environment):
    from unet_fast import tuning

    environment.setenv("UNET_FAST_TUNE", "1")
    environment.setenv("UNET_FAST_CACHE_DIR", str(tmp_path))
    tuning.forget()
    try:
        cli.main(["tune", "--widths", "4,8,16", "--size", "60"])
        out = capsys.readouterr().out
        assert "forward" in out and "weight_grad" in out and "measured ms" in out
        assert "settled" in out and str(tuning.cache_path()) in out and tuning.cache_path().exists()
    finally:
        tuning.forget()


def test_tune_refuses_an_invalid_size(capsys):
    fails_with(["tune", "--widths", "4,8,16", "--size", "61"], "--size 61 does not fit", capsys)


@pytest.mark.parametrize("option,value,match", [
    ("--lr", "nan", "lr must be a finite number > 0, got nan"),
    ("--lr", "0", "lr must be a finite number > 0"),
    ("--checkpoint-every", "-1", r"checkpoint_every must be >= 0 \(0: never\), got -1"),
    ("--val-every", "-5", "val_every must be >= 0"),
    ("--sigma", "inf", "sigma must be a finite number > 0"),
])
def test_train_rejects_bad_numbers_before_training(tmp_path, capsys, option, value, match):
    fails_with(["train", "--out", str(tmp_path / "run"), option, value], match, capsys)
    assert not (tmp_path / "run").exists()


def test_train_stops_when_the_loss_diverges_keeping_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    fails_with(["train", "--out", str(run), "--synthetic-images", "1", "--synthetic-size", "64", "--widths", "4,8,16",
                "--tile", "60", "--val-every", "0", "--checkpoint-every", "1", "--steps", "8", "--lr", "1e30"],
               r"the loss became (nan|inf) at step ([2-8]).*the last checkpoint, of step [1-7], is .*--lr", capsys)
    checkpoint = load_checkpoint(run)
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert all(math.isfinite(loss) for loss in checkpoint["history"]["loss"])


def test_a_run_folder_is_held_by_one_run(tmp_path, capsys):
    from unet_fast.run_folder import locked_run_folder

    with locked_run_folder(tmp_path / "run", ()):
        fails_with(["train", "--out", str(tmp_path / "run"), "--steps", "1", *TINY],
                   rf"--out .*run is in use by another unet-fast run \(process {os.getpid()}\)", capsys)
    (tmp_path / "file").write_text("mine")
    fails_with(["train", "--out", str(tmp_path / "file"), "--steps", "1", *TINY], "is a file, not a folder", capsys)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_run_removes_the_temporaries_a_killed_save_left(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".model.pt.abc123.pt", run / ".training_curve.png.x1y2z3.png"]
    for path in stale:
        path.write_bytes(b"half")
    (run / ".notes.txt").write_text("mine")
    cli.main(["train", "--out", str(run), "--steps", "1", "--synthetic-images", "1", "--synthetic-size", "64", *TINY])
    assert not any(path.exists() for path in stale) and (run / ".notes.txt").read_text() == "mine"


def test_predict_never_writes_over_an_input_and_keeps_names_apart(tmp_path, capsys):
    _folder_dataset(tmp_path / "data", count=1)
    cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "1", *TINY])
    images = tmp_path / "data" / "images"
    before = {path: path.read_bytes() for path in images.iterdir()}
    checkpoint = ["--checkpoint", str(tmp_path / "run" / "model.pt")]
    fails_with(["predict", *checkpoint, str(images), "--out", str(images)], "would write over the input image", capsys)
    assert {path: path.read_bytes() for path in images.iterdir()} == before
    image = files.read_frames(images / "cell0.tif")[0]
    files.write_labels(images / "cell0.png", (image / image.max() * 255).astype(np.uint8))
    cli.main(["predict", *checkpoint, str(images), "--out", str(tmp_path / "masks")])
    written = sorted(path.name for path in (tmp_path / "masks").iterdir())
    assert written == ["cell0.png", "cell0.tif", "cell0_png_overlay.png", "cell0_tif_overlay.png"]
    assert "wrote 4 files" in capsys.readouterr().out


def test_train_options_explain_themselves_and_booleans_are_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--paper-block, --no-paper-block", "--bf16, --no-bf16", "{sgd,adam}", "{none,cosine}",
                     "(0: never)", "share of tiles centred on a random object pixel"):
        assert expected in text
    cli.main(["train", "--out", str(tmp_path), "--steps", "1", "--synthetic-images", "1", "--synthetic-size", "64",
              "--no-paper-block", *TINY])
    assert load_checkpoint(tmp_path)["config"].paper_block is False
    fails_with(["train", "--out", str(tmp_path / "b"), "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'", capsys)


def test_the_default_recipe_and_the_papers(tmp_path, capsys):
    from unet_fast.checkpoint import RECIPES, TrainConfig

    cli.main(["train", "--out", str(tmp_path / "default"), "--steps", "1", *TINY])
    cli.main(["train", "--out", str(tmp_path / "paper"), "--steps", "1", "--recipe", "paper", "--lr", "0.02", *TINY])
    default, paper = (load_checkpoint(tmp_path / name)["config"] for name in ("default", "paper"))
    assert (default.optimizer, default.lr, default.lr_decay, default.warmup_steps) == ("adam", 1e-3, "cosine", 20)
    assert paper == TrainConfig(**{**RECIPES["paper"], "lr": 0.02, "steps": 1, "widths": (4, 8, 16), "tile": 60,
                                   "val_every": 0, "checkpoint_every": 0})  # the paper's, but what was given
    fails_with(["train", "--out", str(tmp_path / "paper"), "--resume", "--recipe", "paper"],
               "--recipe: a resumed run keeps the recipe it started with", capsys)
