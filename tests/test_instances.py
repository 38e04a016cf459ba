"""Objects from a foreground mask: the watershed splits touching cells that connected
components merge, and changes nothing where the parting lines are there."""

import numpy as np
import pytest
from scipy import ndimage

from unet_fast import data, instances, metrics


def _clusters(seed):
    """Dense synthetic cells, and their foreground with the parting lines closed, as a network
    that missed them would predict it."""
    sample = data.synthetic_cells(256, 256, seed=seed, coverage=0.6)
    foreground = ndimage.binary_closing(sample.labels > 0, iterations=2) | (sample.labels > 0)
    return sample.labels, foreground


def test_the_watershed_splits_touching_cells_that_components_merge():
    # measured over these four images: AP50 0.07-0.44 (mean 0.23) against 0.85-1.0 (mean 0.93)
    components, split = [], []
    for seed in range(4):
        labels, merged = _clusters(seed)
        components.append(metrics.average_precision(instances.connected_components(merged), labels, (0.5,))[0.5])
        split.append(metrics.average_precision(instances.watershed(merged), labels, (0.5,))[0.5])
    assert min(split) > 0.8 and np.mean(split) - np.mean(components) > 0.5, (components, split)


def test_the_watershed_keeps_cells_that_are_already_apart():
    labels, _ = _clusters(2)
    assert metrics.average_precision(instances.watershed(labels > 0), labels, (0.5,))[0.5] > 0.97


def test_every_foreground_pixel_gets_an_object():
    mask = np.zeros((20, 40), bool)
    mask[5:15, 3:13] = mask[2, 30] = mask[10:11, 30:38] = True  # a square, a pixel, a thin bar
    labels = instances.watershed(mask)
    assert labels.dtype == np.int32 and np.array_equal(labels > 0, mask)
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="instances must be one of watershed, components, got 'blobs'"):
        instances.from_foreground(np.ones((4, 4)), "blobs")
    with pytest.raises(ValueError, match="h must be a number of pixels > 0"):
        instances.watershed(np.ones((4, 4)), h=float("nan"))
