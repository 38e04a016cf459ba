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
    assert set(metrics.scores(prediction, target)) == {"iou", "dice", "pixel_error", "rand_error", "ap50", "ap75",
                                                       "ap90", "seg"}
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


def _two_cells():
    target = np.zeros((6, 13), np.int32)
    target[1:5, 1:6], target[1:5, 7:12] = 1, 2  # 20 pixels each
    return target


def test_average_precision_and_seg_by_hand():
    target = _two_cells()
    assert metrics.average_precision(target * 3, target) == {t: 1.0 for t in metrics.AP_THRESHOLDS}
    assert metrics.seg(target * 3, target) == 1.0
    shrunk = target.copy()
    shrunk[1:5, 7:10] = 0  # the second cell predicted as 8 of its 20 pixels: IoU 0.4, under half of it
    precision = metrics.average_precision(shrunk, target, thresholds=(0.5, 0.9))
    assert precision == {0.5: pytest.approx(1 / 3), 0.9: pytest.approx(1 / 3)}  # 1 match, 1 FP, 1 FN
    assert metrics.seg(shrunk, target) == pytest.approx((1 + 0) / 2)
    merged = target > 0
    merged[1:5, 6] = True  # one object of 44 pixels: IoU 20/44 with each cell, no match, covering both
    assert metrics.average_precision(merged, target, thresholds=(0.5,)) == {0.5: 0.0}  # 0 TP, 1 FP, 2 FN
    assert metrics.seg(merged, target) == pytest.approx(20 / 44)
    split = target.copy()
    split[1:5, 1:3] = 3  # the first cell in pieces of 8 and 12 pixels: the larger one matches at IoU 0.6
    assert metrics.average_precision(split, target, thresholds=(0.55, 0.65)) == {0.55: pytest.approx(2 / 3),
                                                                                0.65: pytest.approx(1 / 4)}


def test_average_precision_is_the_optimal_one_to_one_matching():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.integers(0, 6, (12, 12))
        prediction = np.where(rng.random((12, 12)) < 0.8, target, rng.integers(0, 6, (12, 12)))
        target, prediction = (metrics.instances(a) for a in (target, prediction))
        ids_t, ids_p = np.unique(target[target > 0]), np.unique(prediction[prediction > 0])
        iou = np.array([[np.count_nonzero((target == a) & (prediction == b)) /
                         np.count_nonzero((target == a) | (prediction == b)) for b in ids_p] for a in ids_t])
        for threshold, found in metrics.average_precision(prediction, target).items():
            rows, cols = linear_sum_assignment(-(iou >= threshold).astype(float))
            matches = int((iou[rows, cols] >= threshold).sum())
            assert found == pytest.approx(matches / (len(ids_t) + len(ids_p) - matches))


def test_instance_scores_refuse_what_they_cannot_score():
    target = _two_cells()
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0.5, 1\)"):
        metrics.average_precision(target, target, thresholds=(0.3,))
    with pytest.raises(ValueError, match="SEG needs at least one object"):
        metrics.seg(target, np.zeros_like(target))
    with pytest.raises(ValueError, match="prediction has shape"):
        metrics.seg(target[:, :5], target)
    assert metrics.average_precision(np.zeros((3, 3)), np.zeros((3, 3))) == {t: 1.0 for t in metrics.AP_THRESHOLDS}
