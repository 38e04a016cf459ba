"""Overlap-tile inference (the U-Net paper's Fig. 2): segment an image of any size with a
valid-convolution U-Net by running it on overlapping input tiles, with the image mirrored
beyond its borders.

Tiles step by a multiple of 2**pools, so every tile sees the pooling grid the whole image
would: the stitched result equals the network's output on the whole mirror-padded image, not
an approximation of it. Tiles are cut straight from the image by mirrored indices (no padded
copy) and run in batches of ``batch_size``, so memory stays bounded by the batch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from unet_fast.geometry import UNetGeometry


def mirror_indices(length: int, start: int, count: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices into a side of ``length`` for positions ``start .. start + count - 1``, mirrored
    about the first and last pixel (…2 1 0 1 2… at the left edge) as often as needed."""
    positions = torch.arange(start, start + count, device=device)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    positions = positions % period
    return torch.where(positions >= length, period - positions, positions)


def mirror_window(image: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The ``height`` x ``width`` window at (top, left) of ``image`` (..., H, W), which may reach
    beyond the image's borders: beyond them the image is mirrored."""
    rows = mirror_indices(image.shape[-2], top, height, image.device)
    cols = mirror_indices(image.shape[-1], left, width, image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def model_geometry(model: nn.Module) -> UNetGeometry:
    """The size arithmetic of a unet_fast or reference U-Net (without ``retain_dim``)."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if getattr(module, "retain_dim", False):
        raise ValueError("overlap-tile inference needs the network's valid output: build the model with retain_dim=False")
    if isinstance(getattr(module, "geometry", None), UNetGeometry):
        return module.geometry
    try:
        return UNetGeometry(depth=len(module.encoder.enc_blocks), stages=len(module.decoder.upconvs))
    except AttributeError:
        raise TypeError(f"model must be a unet_fast.UNet or a reference U-Net, got {type(module).__name__}") from None


def tile_stride(geometry: UNetGeometry, tile: int) -> int:
    """How far apart tiles start: the output size rounded down to the pooling grid's step."""
    output = geometry.output_size(tile, name="tile")
    step = 2 ** (geometry.depth - 1)
    stride = output - output % step
    if stride == 0:
        smallest = next(n for n in geometry.valid_input_sizes(tile, tile + 4 * step) if geometry.output_size(n) >= step)
        raise ValueError(f"tile {tile} gives only {output} output pixels, fewer than the pooling grid's step {step}; "
                         f"use a tile of at least {smallest}")
    return stride


def predict_tiled(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    *,
    tile: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> torch.Tensor:
    """The network's output (logits) for every pixel of ``image`` (H, W) or (C, H, W), as a
    float32 (classes, H, W) tensor on the image's device (numpy input: on the CPU).

    ``tile`` is the input tile side (default: the smallest valid size >= 572 whose tiles cover
    the image, so small images run as one tile); tiles run on the model's device, ``batch_size``
    at a time, in the model's current mode (call ``model.eval()`` first as usual).
    """
    image = torch.as_tensor(image)
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"image must be (H, W) or (C, H, W) with H, W >= 1, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor (normalised intensities), got {image.dtype}")
    height, width = image.shape[-2:]
    if tile is None:
        tile = default_tile(model_geometry(model), max(height, width))

    def read(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return image.index_select(-2, rows.to(image.device)).index_select(-1, cols.to(image.device))

    return predict_region(model, read, (height, width), (0, 0, height, width), tile=tile, batch_size=batch_size,
                          progress=progress).to(image.device)


@torch.no_grad()
def predict_region(
    model: nn.Module,
    read: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, int],
    box: tuple[int, int, int, int],
    *,
    tile: int,
    batch_size: int = 4,
    progress: bool = False,
) -> torch.Tensor:
    """The logits (classes, rows, cols) of the window ``box`` = (top, left, rows, cols) of an
    image of ``shape`` (H, W), equal to that window of :func:`predict_tiled` on the whole image
    when ``top`` and ``left`` are multiples of the tile stride: the same tiles, mirrored at the
    image's borders. ``read(row_indices, col_indices)`` returns those pixels, (C, len, len)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    geometry = model_geometry(model)
    stride = tile_stride(geometry, tile)
    margin = (tile - geometry.output_size(tile)) // 2
    top, left, rows, cols = box
    if top % stride or left % stride:
        raise ValueError(f"the window must start on the tile grid (multiples of {stride}), got ({top}, {left})")
    parameter = next(model.parameters(), torch.empty(0))  # none: an exported network, on the CPU in fp32
    starts = [(y, x) for y in range(top, top + rows, stride) for x in range(left, left + cols, stride)]
    result = None
    batches = range(0, len(starts), batch_size)
    for first in tqdm(batches, desc="tiles", unit="batch", disable=not progress, leave=False):
        chunk = starts[first:first + batch_size]
        tiles = torch.stack([read(mirror_indices(shape[0], y - margin, tile), mirror_indices(shape[1], x - margin, tile))
                             for y, x in chunk])
        output = model(tiles.to(device=parameter.device, dtype=parameter.dtype)).float().cpu()
        if result is None:
            result = torch.empty(output.shape[1], rows, cols)
        for (y, x), tile_output in zip(chunk, output):
            height, width = min(stride, top + rows - y), min(stride, left + cols - x)
            result[:, y - top:y - top + height, x - left:x - left + width] = tile_output[:, :height, :width]
    return result


def tile_reach(geometry: UNetGeometry, tile: int, shape: tuple[int, int], box: tuple[int, int, int, int]
               ) -> tuple[slice, slice]:
    """The rows and columns of the image that :func:`predict_region` reads for ``box``: a
    block's input, its margins and their mirror images."""
    stride = tile_stride(geometry, tile)
    margin = (tile - geometry.output_size(tile)) // 2
    top, left, rows, cols = box
    reach = []
    for length, start, count in ((shape[0], top, rows), (shape[1], left, cols)):
        indices = torch.cat([mirror_indices(length, s - margin, tile) for s in range(start, start + count, stride)])
        reach.append(slice(int(indices.min()), int(indices.max()) + 1))
    return reach[0], reach[1]


def default_tile(geometry: UNetGeometry, side: int) -> int:
    """The smallest valid tile that covers ``side`` in one stride, but at most the first valid
    size >= 572 (the paper's tile; larger images take several)."""
    step = 2 ** (geometry.depth - 1)
    cap = geometry.valid_input_sizes(572, 572 + step)[0]
    for size in geometry.valid_input_sizes(1, cap):
        if geometry.output_size(size) >= step and tile_stride(geometry, size) >= side:
            return size
    return cap


def padded_size(geometry: UNetGeometry, tile: int, side: int) -> int:
    """Side of the mirror-padded image whose whole-image output the tiles reproduce: enough
    strides to cover ``side``, plus the tile's margin."""
    stride = tile_stride(geometry, tile)
    return math.ceil(side / stride) * stride + tile - stride
