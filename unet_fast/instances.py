"""Objects from a predicted foreground mask.

The paper keeps touching cells apart by teaching the network the thin background lines
between them (the border term of its weight map); where the network misses a line, the
foreground's connected components merge the cells on either side. ``watershed`` splits them
again: markers at the maxima of the (lightly smoothed) distance to the background that stand
at least ``h`` pixels above their surroundings, grown back over the foreground. On synthetic
clusters whose parting lines were closed, AP50 went from 0.14-0.21 (connected components) to
0.86-0.90 (h = 1); where the lines were all there it changed nothing (1.0, tests/test_instances.py).
"""

from __future__ import annotations

import numpy as np

METHODS = ("watershed", "components")


def connected_components(foreground: np.ndarray) -> np.ndarray:
    """Instance labels (int32): the 4-connected components of the foreground."""
    from scipy import ndimage

    return ndimage.label(np.asarray(foreground) > 0)[0].astype(np.int32)


def watershed(foreground: np.ndarray, h: float = 1.0) -> np.ndarray:
    """Instance labels (int32) of the foreground with touching objects split along the necks
    between them (see the module docstring). Every foreground pixel gets an object."""
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential
    from skimage.segmentation import watershed as grow

    mask = np.asarray(foreground) > 0
    if not h > 0 or not np.isfinite(h):
        raise ValueError(f"h must be a number of pixels > 0, got {h}")
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
    markers = ndimage.label(h_maxima(distance, h) & mask)[0]
    # An object too thin to hold a maximum that high is one object, not background.
    components, count = ndimage.label(mask)
    marked = np.zeros(count + 1, bool)
    marked[components[markers > 0]] = True
    unmarked = mask & ~marked[components]
    markers[unmarked] = markers.max() + components[unmarked]
    return relabel_sequential(grow(-distance, markers, mask=mask))[0].astype(np.int32)


def from_foreground(foreground: np.ndarray, method: str = "watershed") -> np.ndarray:
    """Instance labels by ``method``: one of METHODS."""
    if method == "watershed":
        return watershed(foreground)
    if method == "components":
        return connected_components(foreground)
    raise ValueError(f"instances must be one of {', '.join(METHODS)}, got {method!r}")
