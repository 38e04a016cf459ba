"""Segmentation scores: IoU, Dice and pixel error on foreground masks, and the adapted Rand
error of the ISBI 2012 challenge on instances.

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


def scores(prediction, target) -> dict[str, float]:
    """Every score above, by name."""
    return {
        "iou": iou(prediction, target),
        "dice": dice(prediction, target),
        "pixel_error": pixel_error(prediction, target),
        "rand_error": rand_error(prediction, target),
    }
