"""Segmenting image files with a trained network."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_fast import files
from unet_fast.checkpoint import TrainConfig
from unet_fast.predict import image_paths, predict_files, segment


class Brightness(torch.nn.Module):
    """Stands in for a trained U-Net of the tiny geometry: foreground where the image is bright."""

    def __init__(self):
        super().__init__()
        self.net = TrainConfig(widths=(4, 8, 16), tile=60).build_model()

    def forward(self, x):
        margin = (x.shape[-1] - self.net.output_size(x.shape[-1])) // 2
        centre = x[..., margin:x.shape[-2] - margin, margin:x.shape[-1] - margin]
        return torch.cat([0.5 - centre, centre - 0.5], dim=1) + 0 * self.net(x)


def _network():
    model = Brightness().eval()
    model.geometry = model.net.geometry
    return model


@pytest.mark.parametrize("method", ["watershed", "components"])
def test_segment_gives_the_objects_of_the_foreground(method):
    image = np.zeros((50, 70), np.float32)
    image[5:15, 5:15] = image[30:40, 40:60] = 1
    labels = segment(_network(), image, tile=60, method=method)
    assert labels.dtype == np.int32 and labels.max() == 2
    np.testing.assert_array_equal(labels > 0, image > 0.5)


def test_touching_cells_are_split_by_the_watershed_unless_components_are_asked_for():
    image = np.zeros((50, 70), np.float32)
    yy, xx = np.mgrid[:50, :70]
    image[(np.hypot(yy - 25, xx - 22) < 11) | (np.hypot(yy - 25, xx - 41) < 11)] = 1  # two discs, a narrow neck
    assert segment(_network(), image, tile=60).max() == 2
    assert segment(_network(), image, tile=60, method="components").max() == 1
    with pytest.raises(ValueError, match="instances must be one of watershed, components"):
        segment(_network(), image, tile=60, method="voronoi")


def test_predict_files_writes_labels_with_the_input_name_and_an_overlay(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    picture = np.zeros((40, 30), np.uint16)
    picture[5:15, 5:15] = 3000
    Image.fromarray((picture // 20).astype(np.uint8)).save(inputs / "cells.png")
    tifffile.imwrite(inputs / "stack.tif", np.stack([picture, picture[::-1]]), photometric="minisblack")
    written = predict_files(_network(), [inputs], tmp_path / "out", tile=60)
    names = sorted(p.name for p in written)
    assert names == ["cells.png", "cells_overlay.png", "stack.tif", "stack_0_overlay.png", "stack_1_overlay.png"]
    labels = files.read_frames(tmp_path / "out" / "cells.png")[0]
    assert labels.max() == 1 and labels[10, 10] == 1 and labels[30, 20] == 0
    assert files.read_frames(tmp_path / "out" / "stack.tif").shape == (2, 40, 30)


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image or folder at"):
        image_paths([tmp_path / "nope.png"])
    with pytest.raises(FileNotFoundError, match="no .tif, .tiff or .png images in"):
        image_paths([tmp_path])
