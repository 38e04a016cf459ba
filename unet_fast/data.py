"""Datasets: the built-in synthetic fluorescence cell images, and folders of image/mask files.

A dataset here is a list of :class:`Sample`: one normalised float32 image and its instance labels
(0 = background, 1..K = objects). Images are small enough next to a U-Net's activations that
holding them in memory is the simple and fast choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from unet_fast import files

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class Sample:
    """One training or test image: ``image`` float32 (H, W), ``labels`` int32 (H, W)."""

    image: np.ndarray
    labels: np.ndarray
    name: str


@dataclass(frozen=True)
class _Crowd:
    """How big, how elongated and how crowded a style's objects are."""

    radius: tuple[float, float]  # range of the mean semi-axis, pixels
    elongation: float  # each semi-axis is the radius times 1 +- up to this
    coverage: float
    overlap: float


_CELLS = _Crowd(radius=(9.0, 20.0), elongation=0.25, coverage=0.4, overlap=0.15)
_CROWDS = {"fluorescence": _CELLS, "phase": _CELLS, "nuclei": _Crowd((6.0, 11.0), 0.1, 0.6, 0.25)}
SYNTHETIC_STYLES = tuple(_CROWDS)


PERCENTILES = (1.0, 99.8)  # mapped to 0 and 1 by normalize_percentiles, in training and prediction


def normalize_percentiles(image: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> np.ndarray:
    """Maps the ``low`` and ``high`` intensity percentiles to 0 and 1 (float32, not clipped):
    robust to hot pixels and to the 8/16-bit range a microscope happened to use."""
    lo, hi = np.percentile(image, (low, high))
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Sets to background every object pixel next to another object, so touching objects are
    parted by a thin background line, as in the paper's annotations (its Fig. 3)."""
    highest = ndimage.maximum_filter(labels, size=3)
    lowest = ndimage.minimum_filter(np.where(labels == 0, np.iinfo(labels.dtype).max, labels), size=3)
    touching = (labels > 0) & ((highest != labels) | (lowest != labels))
    return np.where(touching, 0, labels).astype(labels.dtype)


def synthetic_cells(
    height: int,
    width: int,
    *,
    seed: int = 0,
    radius: tuple[float, float] | None = None,
    coverage: float | None = None,
    overlap: float | None = None,
    photons: float = 40.0,
    style: str = "fluorescence",
) -> Sample:
    """A fluorescence-style image of touching and overlapping cells, with instance labels; with
    ``style="phase"``, phase-contrast-like instead: dark cells, each in a bright halo, on a
    bright background (the halo bleeding into the gaps between touching cells); with
    ``style="nuclei"``, dense fluorescent nuclei: smaller, rounder and more crowded (``radius``
    6-11, ``coverage`` 0.6, ``overlap`` 0.25 unless given), most touching a neighbour. ``radius``,
    ``coverage`` and ``overlap`` default to the style's.

    Cells are irregular blobs (ellipses with random low harmonics on the outline) of varied size,
    brightness and texture, dimmer towards their edges; where cells overlap their light adds up
    and the label goes to the cell on top; centres closer than ``1 - overlap`` times the sum of
    two cells' radii are redrawn. Touching cells are parted by a background line in the labels. The image then gets uneven illumination, optical blur, Poisson (shot)
    and Gaussian (read) noise. ``coverage`` is the expected fraction of the area under cells,
    ``photons`` the expected count of a cell of brightness 1. Same seed, same sample.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if style not in SYNTHETIC_STYLES:
        raise ValueError(f"style must be one of {', '.join(SYNTHETIC_STYLES)}, got {style!r}")
    crowd = _CROWDS[style]
    radius = radius or crowd.radius
    coverage = crowd.coverage if coverage is None else coverage
    overlap = crowd.overlap if overlap is None else overlap
    elongation = crowd.elongation
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int32)
    light = np.zeros((height, width), np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), 2.0)
    texture = 1.0 + 0.25 * texture / max(float(texture.std()), 1e-6)
    mean_area = math.pi * (0.5 * (radius[0] + radius[1])) ** 2
    wanted = rng.poisson(coverage * height * width / mean_area)
    placed = np.empty((wanted, 3))  # centre y, centre x, mean radius of every cell so far
    count = 0
    for _ in range(4 * wanted):
        if count == wanted:
            break
        centre = rng.uniform((0, 0), (height, width))
        semi_axes = rng.uniform(*radius) * rng.uniform(1 - elongation, 1 + elongation, 2)
        # Cells may touch and overlap a little (by up to `overlap` of their radii), as in a
        # dense culture, but not pile up into blobs no annotator could split.
        others = placed[:count]
        reach = (1 - overlap) * (others[:, 2] + semi_axes.mean())
        if np.any(np.hypot(others[:, 0] - centre[0], others[:, 1] - centre[1]) < reach):
            continue
        placed[count] = (*centre, semi_axes.mean())
        count += 1
        inside, profile, box = _random_cell(rng, centre, semi_axes, height, width)
        free = inside & (labels[box] == 0)
        labels[box][free] = count
        light[box] += np.where(inside, profile * rng.lognormal(0.0, 0.35), 0.0).astype(np.float32)
    labels = separate_touching(labels)
    illumination = ndimage.zoom(rng.uniform(0.45, 1.25, (4, 4)), (height / 4, width / 4), order=3, grid_mode=True,
                                mode="nearest")[:height, :width]
    if style == "phase":
        cells = (light > 0).astype(np.float32)
        halo = np.clip(ndimage.gaussian_filter(cells, 2.5) - cells, 0, None)
        phase = np.clip(0.9 - 0.55 * np.minimum(light, 1.2) * texture + 1.6 * halo, 0.05, None)
        signal = ndimage.gaussian_filter((0.5 + 0.5 * illumination) * phase, 1.2)
    else:
        signal = ndimage.gaussian_filter(illumination * (0.08 + light * texture), 1.2)
    counts = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32)
    noisy = counts / photons + rng.normal(0.0, 0.03, signal.shape).astype(np.float32)
    return Sample(normalize_percentiles(noisy), _relabel(labels), f"synthetic-{seed}")


def _random_cell(rng: np.random.Generator, centre: np.ndarray, semi_axes: np.ndarray, height: int, width: int):
    """(inside mask, intensity profile, bounding-box slices) of a blob with a random outline."""
    angle = rng.uniform(0, math.pi)
    harmonics = rng.normal(0.0, 0.05, 4)
    phases = rng.uniform(0, 2 * math.pi, 4)
    reach = semi_axes.max() * (1 + np.abs(harmonics).sum()) + 1
    y0, x0 = (max(int(c - reach), 0) for c in centre)
    y1, x1 = min(int(centre[0] + reach) + 1, height), min(int(centre[1] + reach) + 1, width)
    dy, dx = np.mgrid[y0:y1, x0:x1]
    dy, dx = dy - centre[0], dx - centre[1]
    rho = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx) - angle
    ellipse = semi_axes.prod() / np.hypot(semi_axes[1] * np.cos(phi), semi_axes[0] * np.sin(phi))
    outline = ellipse * (1 + sum(h * np.cos((k + 2) * phi + p) for k, (h, p) in enumerate(zip(harmonics, phases))))
    relative = rho / outline
    inside = relative <= 1
    profile = 0.65 + 0.35 * np.clip(1 - relative**2, 0, 1)
    return inside, profile, (slice(y0, y1), slice(x0, x1))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..K (cells hidden under others or by the parting lines vanish)."""
    present, inverse = np.unique(labels, return_inverse=True)
    offset = 0 if present[0] == 0 else 1
    return (inverse.reshape(labels.shape) + offset).astype(np.int32)


def synthetic_dataset(count: int, size: int, seed: int = 0, style: str = "fluorescence") -> list[Sample]:
    """``count`` synthetic images of ``size`` x ``size``, seeds ``seed``, ``seed + 1``, ..."""
    return [synthetic_cells(size, size, seed=seed + i, style=style) for i in range(count)]


def folder_dataset(root: str | Path) -> list[Sample]:
    """Reads ``root/images/NAME.{tif,tiff,png}`` with ``root/masks/NAME.{tif,tiff,png}``.

    Masks hold instance labels, or a binary mask (two values) whose connected components become
    the instances. A TIFF stack of 2D frames gives one sample per frame (masks must match).
    Colour images are averaged to grey. Each frame is normalised by percentiles.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {root} must contain images/ and masks/; {folder} is missing")
    image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_paths:
        raise FileNotFoundError(f"no .tif, .tiff or .png images in {image_dir}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples = []
    for image_path in image_paths:
        if image_path.stem not in masks:
            raise FileNotFoundError(f"image {image_path.name} has no mask: expected {mask_dir / image_path.stem}.(tif|tiff|png)")
        samples += _samples_of(image_path, masks[image_path.stem])
    return samples


def _samples_of(image_path: Path, mask_path: Path) -> list[Sample]:
    frames = files.read_frames(image_path)
    mask_frames = files.read_frames(mask_path, labels=True)
    if frames.shape != mask_frames.shape:
        raise ValueError(
            f"image {image_path.name} has shape {_describe(frames)} but its mask {mask_path.name} has {_describe(mask_frames)}"
        )
    samples = []
    for index, (image, mask) in enumerate(zip(frames, mask_frames)):
        name = image_path.stem if len(frames) == 1 else f"{image_path.stem}[{index}]"
        try:
            labels = instance_labels(mask)
        except ValueError as error:
            raise ValueError(f"mask {mask_path}: {error}") from None
        samples.append(Sample(normalize_percentiles(image.astype(np.float32)), labels, name))
    return samples


def instance_labels(mask: np.ndarray) -> np.ndarray:
    """Instance labels (int32) from an integer mask: a binary one (0 and one other value)
    becomes its connected components; anything else is taken as instance labels already,
    numbered 1..K in the order of their ids (0 stays background)."""
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"a mask must hold integer labels, got dtype {mask.dtype}")
    values, numbered = np.unique(mask, return_inverse=True)
    if values[0] < 0:
        raise ValueError(f"mask labels must be >= 0 (0: background), found {values[0]}")
    if values.size == 1 or (values.size == 2 and values[0] == 0):
        return ndimage.label(mask > 0)[0].astype(np.int32)
    first = 0 if values[0] == 0 else 1
    return (numbered.reshape(mask.shape) + first).astype(np.int32)


def _describe(frames: np.ndarray) -> str:
    """(H, W) for one frame, (frames, H, W) for a stack."""
    return str(frames.shape[1:] if len(frames) == 1 else frames.shape)
