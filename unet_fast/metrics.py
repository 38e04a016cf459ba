"""Segmentation scores: IoU, Dice and pixel error on foreground masks; on instances, the
adapted Rand error of the ISBI 2012 challenge, average precision at IoU thresholds as stardist
and cellpose report it, and the Cell Tracking Challenge's SEG.

Masks may be boolean or labels (anything > 0 is foreground). The Rand error compares
instances; a binary prediction is split into its connected components first, which is how a
pixel classifier's output becomes cells.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def _foreground(mask, name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim < 2:
        raise ValueError(f"{name} must be an image (H, W) or a batch of them, got shape {array.shape}")
    return array > 0


def _pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    predicted, true = _foreground(prediction, "prediction"), _foreground(target, "target")
    if predicted.shape != true.shape:
        raise ValueError(f"prediction has shape {predicted.shape} but target has {true.shape}")
    return predicted, true


def iou(prediction, target) -> float:
    """|P ∩ T| / |P ∪ T| of the foregrounds; 1.0 when both are empty."""
    predicted, true = _pair(prediction, target)
    union = np.count_nonzero(predicted | true)
    return 1.0 if union == 0 else float(np.count_nonzero(predicted & true) / union)


def dice(prediction, target) -> float:
    """2 |P ∩ T| / (|P| + |T|) of the foregrounds; 1.0 when both are empty."""
    predicted, true = _pair(prediction, target)
    total = np.count_nonzero(predicted) + np.count_nonzero(true)
    return 1.0 if total == 0 else float(2 * np.count_nonzero(predicted & true) / total)


def pixel_error(prediction, target) -> float:
    """Fraction of pixels whose foreground/background call is wrong."""
    predicted, true = _pair(prediction, target)
    return float(np.count_nonzero(predicted != true) / predicted.size)


def instances(mask) -> np.ndarray:
    """Instance labels of a mask: label images pass through; a binary mask (two values at most)
    becomes its 4-connected components."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if np.unique(array).size > 2:
        return array.astype(np.int64)
    return ndimage.label(array > 0)[0]


def rand_error(prediction, target) -> float:
    """The ISBI 2012 adapted Rand error (1 - F-score of the Rand index over pixel pairs): 0 is a
    perfect split into instances. Pixels that are background in the target are left out;
    pixels the prediction calls background count as objects of one pixel each (a missed pixel
    is a small split, not a merge of every missed pixel into one object)."""
    from skimage.metrics import adapted_rand_error

    predicted, true = instances(prediction), instances(target)
    if predicted.shape != true.shape:
        raise ValueError(f"prediction has shape {predicted.shape} but target has {true.shape}")
    if not true.any():
        raise ValueError("the Rand error needs at least one object in target")
    missed = predicted == 0
    predicted[missed] = predicted.max() + 1 + np.arange(np.count_nonzero(missed))
    return float(adapted_rand_error(true, predicted)[0])


def _instance_pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    predicted, true = instances(prediction), instances(target)
    if predicted.shape != true.shape:
        raise ValueError(f"prediction has shape {predicted.shape} but target has {true.shape}")
    return predicted, true


def _overlaps(predicted: np.ndarray, true: np.ndarray):
    """(pixels shared, target sizes, predicted sizes) of every (target, predicted) pair of
    objects that share pixels, with both numbered 0..K-1 over their objects (background left out)."""
    true_ids, true_index = np.unique(true, return_inverse=True)
    predicted_ids, predicted_index = np.unique(predicted, return_inverse=True)
    true_sizes = np.bincount(true_index.ravel())
    predicted_sizes = np.bincount(predicted_index.ravel())
    both = (true.ravel() > 0) & (predicted.ravel() > 0)
    pairs, shared = np.unique(true_index.ravel()[both] * len(predicted_ids) + predicted_index.ravel()[both],
                              return_counts=True)
    t, p = np.divmod(pairs, len(predicted_ids))
    t_shift, p_shift = int(true_ids[0] == 0), int(predicted_ids[0] == 0)  # index 0 is background there
    return (t - t_shift, p - p_shift, shared, true_sizes[t_shift:], predicted_sizes[p_shift:])


AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.5, 0.55, ..., 0.9


def average_precision(prediction, target, thresholds=AP_THRESHOLDS) -> dict[float, float]:
    """Average precision at each IoU threshold (>= 0.5), as stardist and cellpose report it:
    TP / (TP + FP + FN), a predicted object matching a target one when their IoU reaches the
    threshold. From 0.5 up an object has at most one partner above the threshold, so the
    matching is one-to-one (a tie at exactly 0.5 goes to the first). 1.0 when both are empty."""
    if any(not 0.5 <= t < 1 for t in thresholds):
        raise ValueError(f"thresholds must lie in [0.5, 1), got {tuple(thresholds)}")
    t, p, shared, true_sizes, predicted_sizes = _overlaps(*_instance_pair(prediction, target))
    pair_iou = shared / (true_sizes[t] + predicted_sizes[p] - shared)
    order = np.argsort(-pair_iou, kind="stable")
    result = {}
    for threshold in thresholds:
        taken_true, taken_predicted, matches = set(), set(), 0
        for k in order[pair_iou[order] >= threshold]:
            if t[k] not in taken_true and p[k] not in taken_predicted:
                taken_true.add(t[k])
                taken_predicted.add(p[k])
                matches += 1
        total = len(true_sizes) + len(predicted_sizes) - matches
        result[threshold] = 1.0 if total == 0 else matches / total
    return result


def seg(prediction, target) -> float:
    """The Cell Tracking Challenge's SEG: the mean, over the target's objects, of the IoU with the
    predicted object covering more than half of it (0 where none does)."""
    t, p, shared, true_sizes, predicted_sizes = _overlaps(*_instance_pair(prediction, target))
    if len(true_sizes) == 0:
        raise ValueError("SEG needs at least one object in target")
    covering = shared > 0.5 * true_sizes[t]
    jaccard = np.zeros(len(true_sizes))
    jaccard[t[covering]] = shared[covering] / (true_sizes[t[covering]] + predicted_sizes[p[covering]] - shared[covering])
    return float(jaccard.mean())


def scores(prediction, target) -> dict[str, float]:
    """Every score above, by name (average precision at IoU 0.5, 0.75 and 0.9)."""
    precision = average_precision(prediction, target, thresholds=(0.5, 0.75, 0.9))
    return {
        "iou": iou(prediction, target),
        "dice": dice(prediction, target),
        "pixel_error": pixel_error(prediction, target),
        "rand_error": rand_error(prediction, target),
        "ap50": precision[0.5],
        "ap75": precision[0.75],
        "ap90": precision[0.9],
        "seg": seg(prediction, target),
    }
