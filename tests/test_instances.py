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
        instances.from_probability(np.ones((4, 4)), "blobs")
    with pytest.raises(ValueError, match="h must be a number of pixels > 0"):
        instances.watershed(np.ones((4, 4)), h=float("nan"))
    with pytest.raises(ValueError, match=r"probability must lie in \[0, 1\].*got values in \[0, 3\]"):
        instances.watershed(np.array([[0, 3]]))


def _two_discs(line_probability):
    """Two discs of radius 12 whose centres lie 6 pixels apart (a blob with no neck), the
    foreground probability 0.97 inside and ``line_probability`` on the line between them."""
    yy, xx = np.mgrid[:40, :64]
    left, right = (yy - 20) ** 2 + (xx - 27) ** 2 < 144, (yy - 20) ** 2 + (xx - 33) ** 2 < 144
    probability = np.where(left | right, 0.97, 0.02)
    probability[(left | right) & (xx == 30)] = line_probability
    return probability, left & (xx < 30), right & (xx > 30)


def test_a_faint_parting_line_splits_the_cells_a_mask_merges():
    faint, left, right = _two_discs(0.6)
    assert instances.watershed(faint > 0.5).max() == 1  # the neck alone is too wide to split them
    labels = instances.watershed(faint)
    assert labels.max() == 2 and np.array_equal(labels > 0, faint > 0.5)
    assert len(np.unique(labels[left])) == 1 and len(np.unique(labels[right])) == 1
    assert labels[left][0] != labels[right][0]
    assert instances.watershed(_two_discs(0.97)[0]).max() == 1  # no line, one object


def test_not_a_number_is_background():
    probability, _, _ = _two_discs(0.6)
    probability[5, 5] = probability[20, 16] = np.nan  # one outside the cells, one at their edge
    labels = instances.watershed(probability)
    assert labels[20, 16] == 0 and labels.max() == 2 and labels[20, 17] > 0


def test_specks_under_a_tenth_of_the_median_area_are_dropped():
    labels = np.zeros((30, 60), np.int32)
    labels[2:12, 2:12], labels[2:12, 20:30], labels[15:25, 2:12] = 1, 2, 3  # 100 pixels each
    labels[20, 40:49] = 4  # 9 pixels, under a tenth of 100: dropped
    labels[25:27, 50:55] = 5  # 10 pixels: kept
    kept = instances.without_fragments(labels)
    assert kept.dtype == np.int32 and sorted(np.unique(kept)) == [0, 1, 2, 3, 4]
    assert not kept[20, 40:49].any() and np.array_equal(kept[25:27, 50:55] > 0, np.ones((2, 5), bool))
    assert np.array_equal(instances.without_fragments(np.zeros((3, 3), np.int32)), np.zeros((3, 3)))


def test_components_are_the_papers_and_keep_specks():
    probability = np.zeros((10, 30))
    probability[1:9, 1:9] = probability[4, 20] = 0.9
    assert instances.from_probability(probability, "components").max() == 2
    assert instances.from_probability(probability, "watershed").max() == 1
