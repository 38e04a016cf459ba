"""Segmentation scores against hand-computed cases."""

import numpy as np
import pytest
import torch

from unet_fast import metrics


def _masks():
    prediction = np.zeros((4, 5), bool)
    target = np.zeros((4, 5), bool)
    prediction[0, :4] = True  # 4 pixels
    target[0, 2:] = True  # 3 pixels, 2 shared
    return prediction, target


def test_iou_dice_and_pixel_error_by_hand():
    prediction, target = _masks()
    assert metrics.iou(prediction, target) == pytest.approx(2 / 5)
    assert metrics.dice(prediction, target) == pytest.approx(2 * 2 / 7)
    assert metrics.pixel_error(prediction, target) == pytest.approx(3 / 20)
    # labels and tensors: anything > 0 is foreground
    assert metrics.iou(torch.from_numpy(prediction * 7), target.astype(np.int32) * 3) == pytest.approx(2 / 5)


def test_empty_masks_agree_perfectly():
    empty = np.zeros((3, 3))
    assert metrics.iou(empty, empty) == metrics.dice(empty, empty) == 1.0
    assert metrics.pixel_error(empty, empty) == 0.0


def test_rand_error_is_zero_for_the_same_split_and_counts_merges():
    target = np.zeros((6, 9), np.int32)
    target[1:5, 1:4] = 1
    target[1:5, 5:8] = 2
    assert metrics.rand_error(target * 5, target) == pytest.approx(0.0)  # other label values, same split
    assert metrics.rand_error(target > 0, target) == pytest.approx(0.0)  # components of a binary mask
    merged = target > 0
    merged[1:5, 4] = True  # the two cells joined: every cross pair is now wrongly together
    # 12 pixels each: pairs together in truth 2 * 144, in the prediction 576, shared 288.
    precision, recall = 288 / 576, 288 / 288
    assert metrics.rand_error(merged, target) == pytest.approx(1 - 2 * precision * recall / (precision + recall), abs=0.02)


def test_scores_has_every_score_and_shapes_must_match():
    prediction, target = _masks()
    assert set(metrics.scores(prediction, target)) == {"iou", "dice", "pixel_error", "rand_error"}
    with pytest.raises(ValueError, match=r"prediction has shape \(4, 5\) but target has \(4, 4\)"):
        metrics.iou(prediction, target[:, :4])
    with pytest.raises(ValueError, match="at least one object"):
        metrics.rand_error(prediction, np.zeros_like(target))
    with pytest.raises(ValueError, match="must be an image"):
        metrics.dice(np.ones(3), np.ones(3))


def test_rand_error_counts_missed_pixels_as_small_splits_not_one_merge():
    target = np.zeros((6, 13), np.int32)
    target[1:5, 1:6], target[1:5, 7:12] = 1, 2
    prediction = target.copy()
    prediction[2, 2] = prediction[2, 8] = 0  # one missed pixel in each cell
    assert 0 < metrics.rand_error(prediction, target) < 0.1  # merging them into one object: ~0.3
