"""Image reading and atomic writing."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_fast import files


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("top, dtype", [(200, np.uint8), (60000, np.uint16)])
def test_labels_round_trip_in_the_smallest_type(tmp_path, suffix, top, dtype):
    labels = np.arange(30 * 20).reshape(30, 20) % (top + 1)
    labels[0, 0] = top
    path = tmp_path / f"labels{suffix}"
    files.write_labels(path, labels)
    read = files.read_frames(path)[0]
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, labels)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, as with open(), not private


def test_labels_beyond_16_bits_need_tiff(tmp_path):
    labels = np.full((4, 4), 70000)
    with pytest.raises(ValueError, match="do not fit a 16-bit PNG"):
        files.write_labels(tmp_path / "big.png", labels)
    files.write_labels(tmp_path / "big.tif", labels)
    assert tifffile.imread(tmp_path / "big.tif").max() == 70000


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.png"
    files.write_rgb(path, np.zeros((4, 4, 3), np.uint8))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_read_frames_gives_frames_and_rejects_other_shapes(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 5, 6), np.uint16), photometric="minisblack")
    assert files.read_frames(tmp_path / "stack.tif").shape == (3, 5, 6)
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((2, 3, 5, 6), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="must be 2D or a stack of 2D frames"):
        files.read_frames(tmp_path / "volume.tif")
    with pytest.raises(ValueError, match="cannot read image"):
        files.read_frames(tmp_path / "missing.png")


def test_overlay_colours_outlines_and_keeps_the_rest_grey():
    image = np.full((10, 10), 0.5, np.float32)
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 2:8] = 1
    rgb = files.overlay(image, labels)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[0, 0] == 127) and np.all(rgb[4, 4] == 127)
    assert not np.all(rgb[2, 4] == rgb[2, 4][0])  # an outline pixel is coloured
    Image.fromarray(rgb)  # a valid picture
