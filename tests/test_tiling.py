"""Overlap-tile inference equals the network on the whole mirror-padded image."""

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import reference
from unet_fast.tiling import mirror_indices, mirror_window, padded_size, predict_tiled, tile_stride

SMALL = dict(enc_chs=(1, 4, 8, 16), dec_chs=(16, 8, 4))
FIVE_LEVELS = dict(enc_chs=(1, 2, 4, 8, 16, 32), dec_chs=(32, 16, 8, 4, 2))  # the paper's geometry, narrow


def _whole_image_output(model, image, tile):
    """The network run once on the mirror-padded image the tiles cut from, cropped to the image."""
    geometry = model.geometry if hasattr(model, "geometry") else unet_fast.UNetGeometry(3, 2)
    height, width = image.shape[-2:]
    margin = (tile - geometry.output_size(tile)) // 2
    padded = mirror_window(image, -margin, -margin, padded_size(geometry, tile, height), padded_size(geometry, tile, width))
    with torch.no_grad():
        return model(padded[None])[0, :, :height, :width]


def test_mirror_indices_reflect_about_the_edge_pixels_any_number_of_times():
    assert mirror_indices(4, -3, 10).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert mirror_indices(1, -5, 4).tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(mirror_indices(5, -4, 13).numpy(), np.pad(np.arange(5), 4, mode="reflect"))


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (17, 45), (61, 44), (90, 33)])
@pytest.mark.parametrize("tile", [44, 60, 92])
def test_tiles_stitch_to_the_whole_image_output(height, width, tile):
    model = unet_fast.UNet(**SMALL).eval()
    image = torch.rand(height, width)
    tiled = predict_tiled(model, image, tile=tile, batch_size=3)
    assert tiled.shape == (2, height, width)
    torch.testing.assert_close(tiled, _whole_image_output(model, image[None], tile), rtol=1e-5, atol=1e-5)


def test_the_paper_geometry_and_the_reference_module_tile_exactly_too():
    model = unet_fast.UNet(**FIVE_LEVELS).eval()
    image = torch.rand(1, 50, 37)
    assert tile_stride(model.geometry, 204) == 16  # 20 output pixels, stepping on the 16-pixel pooling grid
    torch.testing.assert_close(predict_tiled(model, image, tile=204), _whole_image_output(model, image, 204), rtol=1e-5, atol=1e-5)
    oracle = reference.UNet(**SMALL)
    oracle.load_state_dict(unet_fast.UNet(**SMALL).state_dict())
    small = torch.rand(1, 30, 30)
    torch.testing.assert_close(predict_tiled(oracle, small, tile=60), _whole_image_output(oracle, small, 60), rtol=1e-5, atol=1e-5)


def test_channels_batches_numpy_and_the_default_tile():
    model = unet_fast.UNet(enc_chs=(3, 4, 8), dec_chs=(8, 4), num_class=5).eval()
    image = torch.rand(3, 70, 50)
    expected = predict_tiled(model, image, tile=40, batch_size=1)
    torch.testing.assert_close(predict_tiled(model, image.numpy(), tile=40, batch_size=7), expected)
    assert expected.shape == (5, 70, 50)
    torch.testing.assert_close(predict_tiled(model, image), _whole_image_output_default(model, image))


def test_nan_in_the_image_gives_nan_logits():
    model = unet_fast.UNet(**SMALL).eval()
    assert predict_tiled(model, torch.full((1, 50, 50), float("nan")), tile=44).isnan().all()
    image = torch.rand(1, 120, 120)
    image[0, 90, 100] = float("nan")
    logits = predict_tiled(model, image, tile=44)
    assert logits[:, 90, 100].isnan().all() and not logits[:, :40, :40].isnan().any()  # beyond its reach


def _whole_image_output_default(model, image):
    # The default tile covers a small image in one tile: the network on the mirror-padded image.
    geometry = model.geometry
    tile = next(n for n in geometry.valid_input_sizes(1, 600) if tile_stride_or_zero(geometry, n) >= 70)
    margin = (tile - geometry.output_size(tile)) // 2
    with torch.no_grad():
        return model(mirror_window(image, -margin, -margin, tile, tile)[None])[0, :, :70, :50]


def tile_stride_or_zero(geometry, tile):
    try:
        return tile_stride(geometry, tile)
    except ValueError:
        return 0


def test_bad_arguments_are_named():
    model = unet_fast.UNet(**FIVE_LEVELS).eval()
    with pytest.raises(ValueError, match="tile 190 does not fit this U-Net.*Nearest valid sizes: 188 and 204"):
        predict_tiled(model, torch.rand(8, 8), tile=190)
    with pytest.raises(ValueError, match="tile 188 gives only 4 output pixels.*at least 204"):
        predict_tiled(model, torch.rand(8, 8), tile=188)
    with pytest.raises(ValueError, match=r"image must be \(H, W\) or \(C, H, W\)"):
        predict_tiled(model, torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        predict_tiled(model, torch.zeros(8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="retain_dim=False"):
        predict_tiled(unet_fast.UNet(**SMALL, retain_dim=True), torch.rand(8, 8), tile=44)
    with pytest.raises(TypeError, match="must be a unet_fast.UNet or a reference U-Net"):
        predict_tiled(torch.nn.Conv2d(1, 2, 3), torch.rand(8, 8), tile=44)
