"""Elastic deformation, flips and rotations."""

import pytest
import torch

from unet_fast.augment import elastic_deform, flip_rotate
from unet_fast.data import synthetic_cells


def _sample(size=96):
    sample = synthetic_cells(size, size, seed=5)
    return torch.from_numpy(sample.image), torch.from_numpy(sample.labels)


def test_same_generator_seed_gives_the_same_deformation_and_another_seed_another():
    image, labels = _sample()
    first = elastic_deform(image, labels, generator=torch.Generator().manual_seed(1))
    again = elastic_deform(image, labels, generator=torch.Generator().manual_seed(1))
    other = elastic_deform(image, labels, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    assert not torch.equal(first[1], other[1])


def test_labels_stay_integral_and_only_take_existing_values():
    image, labels = _sample()
    _, deformed, _ = elastic_deform(image, labels, generator=torch.Generator().manual_seed(0))
    assert deformed.dtype == labels.dtype and deformed.shape == labels.shape
    assert set(deformed.unique().tolist()) <= set(labels.unique().tolist())
    assert not torch.equal(deformed, labels)  # it did move


def test_image_labels_and_weights_move_together():
    # Each pixel's row (then column) index in all three: after deformation they must agree, the
    # labels to the nearest pixel, the bilinear ones exactly (bilinear interpolation of a ramp is
    # exact; PyTorch's bicubic kernel, a = -0.75, is off by a few hundredths), except near the
    # mirror folds at the borders.
    size = 80
    for axis in (0, 1):
        ramp = torch.arange(size, dtype=torch.float64).unsqueeze(1 - axis).expand(size, size).contiguous()
        for mode, tolerance in (("bicubic", 0.1), ("bilinear", 2e-3)):
            image, labels, weights = elastic_deform(ramp, ramp.int(), ramp.float(), interpolation=mode,
                                                    generator=torch.Generator().manual_seed(3 + axis))
            inside = (image > 2) & (image < size - 3)
            assert inside.float().mean() > 0.8
            assert ((image - ramp).abs() > 2).any()  # it did move
            torch.testing.assert_close(weights[inside].double(), image[inside], rtol=0, atol=tolerance)
            assert (labels[inside] - weights[inside]).abs().max() <= 0.5 + 2e-3


def test_displacements_have_the_requested_scale():
    size = 64
    ys = torch.arange(size, dtype=torch.float64)[:, None].expand(size, size).contiguous()
    shifts = []
    for seed in range(20):
        moved, _, _ = elastic_deform(ys, sigma=10.0, interpolation="bilinear", generator=torch.Generator().manual_seed(seed))
        shifts.append((moved - ys)[size // 2, size // 2])  # the centre: a grid node, far from reflections
    spread = torch.stack(shifts).std().item()
    assert 5 < spread < 16


def test_channels_and_bad_arguments():
    image = torch.rand(3, 20, 24)
    out, _, _ = elastic_deform(image, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    with pytest.raises(ValueError, match="labels must have the image's shape"):
        elastic_deform(image, torch.zeros(20, 23, dtype=torch.int64))
    with pytest.raises(ValueError, match="interpolation must be"):
        elastic_deform(image, interpolation="nearest")
    with pytest.raises(ValueError, match=r"image must be \(H, W\) or \(C, H, W\)"):
        elastic_deform(torch.rand(1, 1, 4, 4))


def test_flip_rotate_applies_one_of_eight_symmetries_to_all():
    base = torch.arange(12.0).reshape(3, 4)
    seen = set()
    for seed in range(64):
        a, b, none = flip_rotate(base, base.clone().long(), None, generator=torch.Generator().manual_seed(seed))
        assert none is None
        torch.testing.assert_close(a.long(), b)
        seen.add(tuple(a.flatten().tolist()))
    assert len(seen) == 8
