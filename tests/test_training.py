"""Training: tiles, resume, data-parallel equivalence, and learning something real."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from unet_fast import data, metrics
from unet_fast.checkpoint import RECIPES, TrainConfig, load_checkpoint
from unet_fast.predict import segment
from unet_fast.training import SYNTHETIC, TileSampler, datasets, train

TINY = dict(widths=(4, 8, 16), tile=60, synthetic_images=2, synthetic_size=64, val_every=0, checkpoint_every=0)


def test_tiles_are_reproducible_and_aligned_with_the_output():
    config = TrainConfig(**TINY)
    sampler = TileSampler(datasets(config)[0], config)
    image, target, weights = sampler.draw(step=3, index=1)
    again = sampler.draw(step=3, index=1)
    other = sampler.draw(step=4, index=1)
    assert image.shape == (1, 60, 60) and target.shape == weights.shape == (20, 20)
    assert target.dtype == torch.int64 and set(target.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(again[0], image, rtol=0, atol=0)
    assert not torch.equal(other[0], image)
    assert (weights > 0).all()


def test_targets_line_up_with_the_centre_of_the_input_tile():
    # An image that is its own foreground mask: without deformation (the flips and rotations
    # remain) the target must be the input tile's centre, wherever the window falls.
    config = TrainConfig(**TINY, elastic_sigma=0.0)
    sample = data.synthetic_cells(64, 64, seed=0)
    marked = data.Sample((sample.labels > 0).astype(np.float32), sample.labels, "marked")
    sampler = TileSampler([marked], config)
    for index in range(8):
        image, target, _ = sampler.draw(step=0, index=index)
        torch.testing.assert_close(image[0, 20:40, 20:40], target.float(), rtol=0, atol=1e-4)


def test_resume_continues_exactly(tmp_path):
    straight = train(TrainConfig(**TINY, steps=4), tmp_path / "straight")
    train(TrainConfig(**TINY, steps=2), tmp_path / "resumed")
    resumed = train(TrainConfig(**TINY, steps=4), tmp_path / "resumed", resume=True)
    assert resumed["loss"] == straight["loss"]
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0)
    assert (tmp_path / "resumed" / "training_curve.png").stat().st_size > 1000


def test_resume_refuses_another_configuration(tmp_path):
    train(TrainConfig(**TINY, steps=1), tmp_path)
    with pytest.raises(ValueError, match="cannot resume .* lr changed"):
        train(TrainConfig(**TINY, steps=2, lr=0.5), tmp_path, resume=True)


def test_two_gloo_processes_train_like_one_process_with_both_tiles(tmp_path):
    common = ["--widths", "4,8,16", "--tile", "60", "--synthetic-images", "2", "--synthetic-size", "64",
              "--val-every", "0", "--steps", "2", "--optimizer", "sgd", "--lr", "0.05"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                    "-m", "unet_fast.cli", "train", "--out", str(tmp_path / "ddp"), *common],
                   check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "unet_fast.cli", "train", "--out", str(tmp_path / "one"), "--batch-size", "2",
                    *common], check=True, env=env, capture_output=True, timeout=300)
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    moved = 0
    initial = TrainConfig(**TINY).build_model().state_dict()
    for name, tensor in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(tensor, initial[name])
    assert moved > 0


@pytest.mark.parametrize("modality", ["synthetic", "synthetic-phase", "synthetic-nuclei"])
def test_brief_training_beats_an_otsu_threshold(modality, tmp_path):
    # the default recipe, on a small network
    config = TrainConfig(**RECIPES["default"], data=modality, widths=(8, 16, 32), tile=92, steps=150, sigma=3.0,
                         synthetic_images=4, synthetic_size=192, val_every=0, checkpoint_every=0)
    train(config, tmp_path)
    model = load_checkpoint(tmp_path)["config"].build_model()
    model.load_state_dict(load_checkpoint(tmp_path)["model"])
    test = data.synthetic_cells(256, 256, seed=99, style=SYNTHETIC[modality])
    network = metrics.iou(segment(model.eval(), test.image), test.labels)
    threshold = threshold_otsu(test.image)  # either side of it, whichever is the cells
    otsu = max(metrics.iou(test.image > threshold, test.labels), metrics.iou(test.image < threshold, test.labels))
    assert network > otsu + 0.15, (network, otsu)
    if modality == "synthetic-nuclei":  # crowded: the watershed parts what the network's lines missed
        parted, merged = (metrics.scores(segment(model.eval(), test.image, method=method), test.labels)["ap50"]
                          for method in ("watershed", "components"))
        assert parted > merged + 0.2, (parted, merged)  # 0.44-0.67 against 0.11-0.15 when measured


def test_bf16_autocast_and_adam_train(tmp_path):
    history = train(TrainConfig(**TINY, steps=2, bf16=True, optimizer="adam", lr=1e-3), tmp_path)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))


def test_validation_scores_are_recorded_on_schedule(tmp_path):
    config = TrainConfig(**{**TINY, "val_every": 2}, steps=3)
    history = train(config, tmp_path)
    assert [entry["step"] for entry in history["validation"]] == [2, 3]
    assert all(0 <= entry[score] <= 1 for entry in history["validation"] for score in ("iou", "dice", "ap50"))
    best = max(history["validation"][::-1], key=lambda entry: entry["iou"])  # the later of equals
    assert load_checkpoint(tmp_path / "best.pt")["step"] == best["step"]


def _sparse_sample():
    """One small cell in a large image: most tiles drawn anywhere hold no object."""
    labels = np.zeros((300, 300), np.int32)
    labels[200:210, 40:52] = 1
    image = np.random.default_rng(0).random((300, 300), dtype=np.float32)
    return data.Sample(image, labels, "sparse")


def test_object_tiles_centre_tiles_on_objects():
    config = TrainConfig(**{**TINY, "elastic_sigma": 0.0})
    anywhere = TileSampler([_sparse_sample()], config)
    on_objects = TileSampler([_sparse_sample()], dataclasses.replace(config, object_tiles=1.0))
    with_objects = [sum(bool(sampler.draw(step, 0)[1].any()) for step in range(40)) for sampler in (anywhere, on_objects)]
    assert with_objects[0] <= 8 and with_objects[1] == 40, with_objects
    half = TileSampler([_sparse_sample()], dataclasses.replace(config, object_tiles=0.5))
    assert 10 <= sum(bool(half.draw(step, 0)[1].any()) for step in range(40)) <= 35


def test_the_papers_tiles_are_drawn_as_before_object_tiles_existed():
    # with object_tiles = 0 the window is drawn as before object tiles existed
    sampler = TileSampler([_sparse_sample()], TrainConfig(**{**TINY, "elastic_sigma": 0.0}))
    rng = np.random.default_rng([0, 7, 0])
    rng.integers(2**62), rng.integers(1)
    output = sampler.output
    margin = (60 - output) // 2
    top = int(rng.integers(300 - output + 1)) - margin
    left = int(rng.integers(300 - output + 1)) - margin
    assert 0 <= top <= 240 and 0 <= left <= 240  # inside the image: no mirrored border in the window
    tile = sampler.draw(7, 0)[0][0]
    window = torch.from_numpy(_sparse_sample().image)[top:top + 60, left:left + 60]
    torch.testing.assert_close(tile.sum(), window.sum())  # the same pixels, flipped or turned
