"""Segmenting images with a trained U-Net: overlap-tile logits, foreground by argmax, cells as
the foreground's connected components (the parting lines the weight map taught the network
keep touching cells apart)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unet_fast import data, files, metrics
from unet_fast.tiling import predict_tiled


def segment(model: torch.nn.Module, image: np.ndarray, *, tile: int | None = None, batch_size: int = 4,
            progress: bool = False) -> np.ndarray:
    """Instance labels (H, W) int32 of a normalised image (H, W)."""
    foreground = predict_tiled(model, image, tile=tile, batch_size=batch_size, progress=progress).argmax(0)
    return metrics.instances(foreground.numpy().astype(np.uint8)).astype(np.int32)


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """The image files named, and the .tif/.tiff/.png files in the folders named."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in data.IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no .tif, .tiff or .png images in {item}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no image or folder at {item}")
    return paths


def predict_files(model: torch.nn.Module, inputs: list[str | Path], out_dir: str | Path, *, tile: int | None = None,
                  batch_size: int = 4, progress: bool = False) -> list[Path]:
    """Writes, per input image, ``out_dir/NAME.<its suffix>`` with the instance labels (a stack
    for a stack) and ``out_dir/NAME_overlay.png`` (``NAME_<frame>_overlay.png`` for stacks).
    Returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for path in image_paths(inputs):
        frames = files.read_frames(path)
        images = [data.normalize_percentiles(frame.astype(np.float32)) for frame in frames]
        labels = np.stack([segment(model, image, tile=tile, batch_size=batch_size, progress=progress) for image in images])
        mask_path = out_dir / path.name
        files.write_labels(mask_path, labels[0] if len(labels) == 1 else labels)
        written.append(mask_path)
        for index, (image, frame_labels) in enumerate(zip(images, labels)):
            suffix = "_overlay.png" if len(labels) == 1 else f"_{index}_overlay.png"
            overlay_path = out_dir / f"{path.stem}{suffix}"
            files.write_rgb(overlay_path, files.overlay(image, frame_labels))
            written.append(overlay_path)
    return written
