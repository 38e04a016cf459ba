"""The U-Net paper's weight map: class balancing plus a border term that makes the thin
background gaps between touching objects weigh heavily (Ronneberger et al. 2015, eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))   on background pixels,

d1, d2 the distances to the nearest and second-nearest object. Distances are computed per
object, only within the reach where the border term exceeds w0 * 1e-6, so the cost grows with
the objects' area rather than with objects x image size.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

# Border terms below w0 * _NEGLIGIBLE are dropped: beyond this reach they cannot be larger.
_NEGLIGIBLE = 1e-6


def weight_map(
    labels,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weight: str | Sequence[float] | None = "balanced",
):
    """Weight map of an instance-label image (H, W) or a batch (N, H, W): 0 is background,
    1..K are objects. ``class_weight``: "balanced" (each class weighs total / (classes present
    x its pixel count), so the map averages 1 before the border term), a pair (background,
    foreground), or None (1). Returns float32, as numpy or torch like the input."""
    as_torch = isinstance(labels, torch.Tensor)
    array = labels.detach().cpu().numpy() if as_torch else np.asarray(labels)
    if array.ndim not in (2, 3):
        raise ValueError(f"labels must be (H, W) or (N, H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"labels must hold integer instance labels, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"labels must not be empty, got shape {array.shape}")
    if array.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background, 1..K = objects)")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")
    images = array if array.ndim == 3 else array[None]
    result = np.stack([_single(image, w0, sigma, class_weight) for image in images])
    result = result if array.ndim == 3 else result[0]
    return torch.from_numpy(result).to(labels.device) if as_torch else result


def _single(labels: np.ndarray, w0: float, sigma: float, class_weight) -> np.ndarray:
    weights = _class_weights(labels > 0, class_weight)
    if w0 == 0:
        return weights
    d1, d2 = _two_nearest_distances(labels, reach=sigma * math.sqrt(2 * math.log(1 / _NEGLIGIBLE)))
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    background = labels == 0
    weights[background] += border[background].astype(np.float32)
    return weights


def _class_weights(foreground: np.ndarray, class_weight) -> np.ndarray:
    if class_weight is None:
        return np.ones(foreground.shape, np.float32)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', a (background, foreground) pair or None; got {class_weight!r}")
        counts = np.array([foreground.size - foreground.sum(), foreground.sum()], np.float64)
        present = np.count_nonzero(counts)
        per_class = np.where(counts > 0, foreground.size / (present * np.maximum(counts, 1)), 0.0)
    else:
        per_class = np.asarray(class_weight, np.float64)
        if per_class.shape != (2,):
            raise ValueError(f"class_weight as numbers must be (background, foreground), got {class_weight!r}")
    return per_class[foreground.astype(np.intp)].astype(np.float32)


def _two_nearest_distances(labels: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest object, exact where they
    are within ``reach`` and infinite where no (second) object is that close."""
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    margin = int(math.ceil(reach))
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        window = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, size)) for s, size in zip(box, labels.shape)
        )
        distance = ndimage.distance_transform_edt(labels[window] != label)
        near1, near2 = d1[window], d2[window]
        # The new distance displaces d1 where it is nearer, else d2 where it is nearer.
        near2[...] = np.where(distance < near1, near1, np.minimum(near2, distance))
        near1[...] = np.minimum(near1, distance)
    return d1, d2
