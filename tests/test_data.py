"""Synthetic cells and folder datasets."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from unet_fast import data


def test_synthetic_cells_are_reproducible_and_differ_by_seed():
    first, again, other = (data.synthetic_cells(96, 128, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)
    assert first.image.shape == first.labels.shape == (96, 128)
    assert first.image.dtype == np.float32 and first.labels.dtype == np.int32


def test_synthetic_cells_are_many_touching_consecutively_labelled_objects():
    sample = data.synthetic_cells(256, 256, seed=0)
    count = sample.labels.max()
    assert 40 < count < 400
    np.testing.assert_array_equal(np.unique(sample.labels), np.arange(count + 1))
    coverage = (sample.labels > 0).mean()
    assert 0.2 < coverage < 0.6
    # Touching cells are parted by background: parting them again changes nothing.
    np.testing.assert_array_equal(data.separate_touching(sample.labels), sample.labels)
    # Parted groups exist: background pixels with two different objects around them.
    highest = ndimage.maximum_filter(sample.labels, size=3)
    lowest = ndimage.minimum_filter(np.where(sample.labels == 0, 10**6, sample.labels), size=3)
    assert np.count_nonzero((sample.labels == 0) & (lowest < 10**6) & (highest != lowest)) > 50


def test_synthetic_cells_are_brighter_than_the_background_but_not_separable_by_one_threshold():
    sample = data.synthetic_cells(256, 256, seed=1)
    cells, background = sample.image[sample.labels > 0], sample.image[sample.labels == 0]
    assert cells.mean() > background.mean() + 3 * background.std()
    # Dim cells under uneven illumination overlap the background's intensities.
    assert np.percentile(cells, 2) < np.percentile(background, 98)


def test_separate_touching_parts_objects_and_keeps_isolated_ones():
    labels = np.zeros((5, 8), np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    parted = data.separate_touching(labels)
    assert np.all(parted[1:4, 3:5] == 0)
    assert np.all(parted[1:4, 1:3] == 1) and np.all(parted[1:4, 5:7] == 2)
    single = np.pad(np.ones((3, 3), np.int32), 1)
    np.testing.assert_array_equal(data.separate_touching(single), single)


def test_normalize_percentiles_maps_the_percentiles_to_0_and_1():
    image = np.arange(1001, dtype=np.uint16).reshape(7, 143)[:, :143] * 40
    normalised = data.normalize_percentiles(image, 1, 99)
    assert normalised.dtype == np.float32
    assert np.percentile(normalised, 1) == pytest.approx(0, abs=1e-6)
    assert np.percentile(normalised, 99) == pytest.approx(1, abs=1e-6)
    assert np.all(np.isfinite(data.normalize_percentiles(np.zeros((4, 4)))))


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(array).save(path)
    else:
        tifffile.imwrite(path, array, photometric="minisblack")


def test_folder_dataset_reads_png_and_tiff_instances_binary_masks_and_stacks(tmp_path):
    rng = np.random.default_rng(0)
    binary = np.zeros((20, 30), np.uint8)
    binary[2:6, 2:6] = binary[10:15, 20:28] = 255
    _write(tmp_path / "images/a.png", rng.integers(0, 255, (20, 30), dtype=np.uint8))
    _write(tmp_path / "masks/a.png", binary)
    instances = np.zeros((2, 16, 16), np.uint16)
    instances[0, 1:5, 1:5], instances[0, 6:9, 6:9], instances[1, 3:12, 3:12] = 1, 2, 7
    _write(tmp_path / "images/b.tif", rng.integers(0, 65535, (2, 16, 16), dtype=np.uint16))
    _write(tmp_path / "masks/b.tiff", instances)
    samples = data.folder_dataset(tmp_path)
    assert [s.name for s in samples] == ["a", "b[0]", "b[1]"]
    assert samples[0].labels.max() == 2  # a binary mask's connected components
    np.testing.assert_array_equal(samples[1].labels, instances[0])
    np.testing.assert_array_equal(samples[2].labels > 0, instances[1] > 0)
    assert all(s.image.dtype == np.float32 and s.image.shape == s.labels.shape for s in samples)


def test_folder_dataset_reads_colour_images_as_grey(tmp_path):
    _write(tmp_path / "images/c.png", np.full((12, 10, 3), (30, 60, 90), np.uint8))
    _write(tmp_path / "masks/c.png", np.ones((12, 10), np.uint8))
    (sample,) = data.folder_dataset(tmp_path)
    assert sample.image.shape == (12, 10)


def test_folder_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="must contain images/ and masks/"):
        data.folder_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tif, .tiff or .png images"):
        data.folder_dataset(tmp_path)
    _write(tmp_path / "images/x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="x.png has no mask"):
        data.folder_dataset(tmp_path)
    _write(tmp_path / "masks/x.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"x.png has shape \(8, 8\) but its mask x.png has \(8, 9\)"):
        data.folder_dataset(tmp_path)
    (tmp_path / "masks/x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*x.png"):
        data.folder_dataset(tmp_path)
    _write(tmp_path / "masks/x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"x.png is a colour image \(8, 8, 3\): a label image must have one channel"):
        data.folder_dataset(tmp_path)
    (tmp_path / "masks/x.png").unlink()
    _write(tmp_path / "masks/x.tif", np.full((8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="mask .*x.tif: a mask must hold integer labels, got dtype float32"):
        data.folder_dataset(tmp_path)


def test_instance_ids_of_any_size_and_masks_without_background():
    mask = np.zeros((6, 8), np.uint64)
    mask[:3, :4], mask[:3, 4:], mask[3:, :] = 2**40, 2**31 + 5, 3  # every pixel an object, huge ids
    labels = data.instance_labels(mask)
    assert labels.dtype == np.int32 and sorted(np.unique(labels)) == [1, 2, 3]
    assert len({(m, l) for m, l in zip(mask.ravel(), labels.ravel())}) == 3  # one label per id
    two = np.ones((4, 4), np.int64)
    two[:, 2:] = 2  # two touching objects and no background: not a binary mask
    np.testing.assert_array_equal(data.instance_labels(two), two)
    binary = np.zeros((4, 5), np.uint8)
    binary[:, :2], binary[:, 3:] = 9, 9
    assert sorted(np.unique(data.instance_labels(binary))) == [0, 1, 2]  # components
    with pytest.raises(ValueError, match="mask labels must be >= 0"):
        data.instance_labels(-np.ones((2, 2), np.int16))


def test_phase_style_has_dark_cells_in_bright_halos_on_a_bright_background():
    fluorescence = data.synthetic_cells(256, 256, seed=5)
    phase = data.synthetic_cells(256, 256, seed=5, style="phase")
    assert np.array_equal(phase.labels, fluorescence.labels)  # the same cells, seen otherwise
    cells, background = phase.labels > 0, phase.labels == 0
    assert phase.image[cells].mean() < phase.image[background].mean() - 0.2
    assert fluorescence.image[cells].mean() > fluorescence.image[background].mean() + 0.2
    ring = ndimage.binary_dilation(cells, iterations=3) & ~ndimage.binary_dilation(cells, iterations=1)
    far = ~ndimage.binary_dilation(cells, iterations=12)
    assert phase.image[ring].mean() > phase.image[far].mean()  # the halo
    with pytest.raises(ValueError, match="style must be one of fluorescence, phase, nuclei"):
        data.synthetic_cells(8, 8, style="dic")


def test_nuclei_style_is_small_round_objects_most_of_them_touching():
    cells = data.synthetic_cells(256, 256, seed=2)
    nuclei = data.synthetic_cells(256, 256, seed=2, style="nuclei")
    areas = np.bincount(nuclei.labels.ravel())[1:]
    assert np.median(areas) < 0.5 * np.median(np.bincount(cells.labels.ravel())[1:])
    assert (nuclei.labels > 0).mean() > (cells.labels > 0).mean() + 0.1  # more crowded
    # Touching: the parting line is all that separates an object from a neighbour.
    closed = ndimage.binary_closing(nuclei.labels > 0, iterations=1)
    components = ndimage.label(closed)[1]
    assert components < 0.6 * nuclei.labels.max()
    assert nuclei.image[nuclei.labels > 0].mean() > nuclei.image[nuclei.labels == 0].mean() + 0.2
