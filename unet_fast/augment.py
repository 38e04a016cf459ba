"""Data augmentation as in the U-Net paper: smooth elastic deformations, plus flips and 90-degree
rotations, applied identically to an image, its labels and its weight map.

Everything is torch, so it runs where the tensors are (GPU included), and takes a
``torch.Generator`` so a training run can replay any step exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elastic_deform(
    image: torch.Tensor,
    labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    *,
    sigma: float = 10.0,
    grid: int = 3,
    interpolation: str = "bicubic",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Deforms ``image`` (H, W) or (C, H, W), and ``labels`` and ``weights`` (H, W) with it.

    Random displacement vectors on a coarse ``grid`` x ``grid`` grid, drawn from a Gaussian with
    ``sigma`` pixels standard deviation, bicubically interpolated to one vector per pixel (the
    paper's recipe). The image is resampled with ``interpolation`` ("bicubic" or "bilinear"),
    the weights bilinearly, the labels by nearest neighbour (they stay integers from the input);
    outside the image the content is mirrored.
    """
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    if image.dim() not in (2, 3):
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    for name, tensor in (("labels", labels), ("weights", weights)):
        if tensor is not None and tuple(tensor.shape) != (height, width):
            raise ValueError(f"{name} must have the image's shape ({height}, {width}), got {tuple(tensor.shape)}")
    displacement = torch.randn(1, 2, grid, grid, generator=generator, dtype=torch.float64) * sigma
    displacement = F.interpolate(displacement, size=(height, width), mode="bicubic", align_corners=True)
    sample_grid = _sampling_grid(displacement[0], height, width).to(image.device)

    def resample(tensor: torch.Tensor, mode: str) -> torch.Tensor:
        batch = tensor.reshape(1, -1, height, width)
        values = batch.to(torch.float64 if mode == "nearest" else sample_grid.dtype)
        out = F.grid_sample(values, sample_grid.to(values.dtype), mode=mode, padding_mode="reflection", align_corners=True)
        return out.to(tensor.dtype).reshape(tensor.shape)

    return (
        resample(image, interpolation),
        None if labels is None else resample(labels, "nearest"),
        None if weights is None else resample(weights, "bilinear"),
    )


def _sampling_grid(displacement: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """grid_sample's (1, H, W, 2) grid of normalised (x, y) source positions: identity + displacement."""
    ys = torch.arange(height, dtype=torch.float64)[:, None] + displacement[0]
    xs = torch.arange(width, dtype=torch.float64)[None, :] + displacement[1]
    normalised_y = ys * (2 / max(height - 1, 1)) - 1
    normalised_x = xs * (2 / max(width - 1, 1)) - 1
    return torch.stack([normalised_x, normalised_y], dim=-1)[None].float()


def flip_rotate(*tensors: torch.Tensor | None, generator: torch.Generator | None = None) -> list[torch.Tensor | None]:
    """One of the eight flips/90-degree rotations, chosen at random, applied to every tensor's
    last two dimensions (None passes through)."""
    quarter_turns, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    flip = flip % 2

    def apply(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        tensor = torch.rot90(tensor, quarter_turns, dims=(-2, -1))
        return tensor.flip(-1) if flip else tensor

    return [apply(tensor) for tensor in tensors]
