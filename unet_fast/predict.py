"""Segmenting images with a trained U-Net: overlap-tile logits, the foreground's probability,
cells from it (unet_fast.instances: the parting lines the weight map taught the network keep
touching cells apart, and a watershed splits those whose line it missed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from unet_fast import data, files, instances
from unet_fast.tiling import predict_tiled


def segment(model: torch.nn.Module, image: np.ndarray, *, tile: int | None = None, batch_size: int = 4,
            progress: bool = False, method: str = "watershed") -> np.ndarray:
    """Instance labels (H, W) int32 of a normalised image (H, W); ``method`` one of
    instances.METHODS."""
    if method not in instances.METHODS:
        raise ValueError(f"instances must be one of {', '.join(instances.METHODS)}, got {method!r}")
    logits = predict_tiled(model, image, tile=tile, batch_size=batch_size, progress=progress)
    return instances.from_probability(instances.foreground_probability(logits), method)


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
                  batch_size: int = 4, progress: bool = False, method: str = "watershed") -> list[Path]:
    """Writes, per input image, ``out_dir/NAME.<its suffix>`` with the instance labels (a stack
    for a stack) and ``out_dir/NAME_overlay.png`` (``NAME_<frame>_overlay.png`` for stacks;
    NAME_<suffix> where two inputs share a name, as a.tif and a.png). Refuses, before writing
    anything, to write over an input or twice to one file. Returns the paths written."""
    out_dir = Path(out_dir)
    paths = image_paths(inputs)
    kept = {path.resolve() for path in paths}  # never written over
    written: list[Path] = []
    for path, mask_path, overlay_stem in _planned_outputs(paths, out_dir):
        frames = files.read_frames(path)
        images = [data.normalize_percentiles(frame.astype(np.float32)) for frame in frames]
        labels = np.stack([segment(model, image, tile=tile, batch_size=batch_size, progress=progress, method=method)
                           for image in images])
        files.write_labels(mask_path, labels[0] if len(labels) == 1 else labels)
        written.append(mask_path)
        kept.add(mask_path.resolve())
        for index, (image, frame_labels) in enumerate(zip(images, labels)):
            suffix = "_overlay.png" if len(labels) == 1 else f"_{index}_overlay.png"
            overlay_path = out_dir / f"{overlay_stem}{suffix}"
            if overlay_path.resolve() in kept:
                raise ValueError(f"the overlay of {path} would replace {overlay_path}, an input or a file "
                                 "written for another input: rename one of them or choose another --out")
            files.write_rgb(overlay_path, files.overlay(image, frame_labels))
            written.append(overlay_path)
            kept.add(overlay_path.resolve())
    return written


def _planned_outputs(paths: list[Path], out_dir: Path) -> list[tuple[Path, Path, str]]:
    """(input, label file, overlay name stem) per input, refusing outputs that would replace an
    input or each other."""
    inputs = {path.resolve(): path for path in paths}
    stems = Counter(path.stem for path in paths)
    planned, targets = [], {}
    for path in paths:
        mask_path = out_dir / path.name
        if mask_path.resolve() in inputs:
            raise ValueError(f"--out {out_dir} would write over the input image {path}: choose another folder")
        if mask_path.resolve() in targets:
            raise ValueError(f"{targets[mask_path.resolve()]} and {path} would both be written to {mask_path}: "
                             "predict them into different folders")
        targets[mask_path.resolve()] = path
        stem = path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        planned.append((path, mask_path, stem))
    return planned
