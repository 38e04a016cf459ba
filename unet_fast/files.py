"""Reading and writing images: TIFF through tifffile, PNG through Pillow (each loaded when first
used), every write atomic (a temporary file in the target folder, then a rename), so a crash
never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")


def read_frames(path: str | Path, labels: bool = False) -> np.ndarray:
    """The 2D frames of an image file as (frames, H, W); colour (H, W, 3 or 4) is averaged to
    grey, or refused for a label image (``labels``)."""
    import tifffile
    from PIL import Image

    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as error:  # each reader has its own exception types for a broken file
        raise ValueError(f"cannot read image {path}: {error}") from error
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        if labels:
            raise ValueError(f"{path} is a colour image {array.shape}: a label image must have one channel")
        array = array[..., :3].mean(axis=-1)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"image {path} must be 2D or a stack of 2D frames, got shape {array.shape}")
    return array


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make results private
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Instance labels as TIFF or PNG (by suffix), in the smallest of 8/16/32-bit that holds them
    (PNG stops at 16 bits)."""
    import tifffile
    from PIL import Image

    path = Path(path)
    top = int(labels.max(initial=0))
    dtype = np.uint8 if top <= 0xFF else np.uint16 if top <= 0xFFFF else np.uint32
    if dtype is np.uint32 and path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"{top} labels do not fit a 16-bit PNG; write {path.with_suffix('.tif')} instead")
    with atomic_path(path) as temporary:
        if path.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(temporary, labels.astype(dtype), photometric="minisblack")
        else:
            Image.fromarray(labels.astype(dtype)).save(temporary, format="PNG")


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """An (H, W, 3) uint8 picture as PNG."""
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(rgb).save(temporary, format="PNG")


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The grey image with every object's outline (2 pixels, inside the object) drawn in a vivid
    colour of its own: (H, W, 3) uint8."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    outline = ndimage.binary_dilation(find_boundaries(labels, mode="inner")) & (labels > 0)
    rgb[outline] = _palette(int(labels.max(initial=0)) + 1)[labels[outline]]
    return rgb


def _palette(count: int) -> np.ndarray:
    """``count`` vivid colours of golden-ratio-spaced hues (neighbours rarely look alike)."""
    from matplotlib.colors import hsv_to_rgb

    hue = (np.arange(count) * 0.618034) % 1.0
    return (hsv_to_rgb(np.stack([hue, np.full(count, 0.75), np.ones(count)], axis=1)) * 255).astype(np.uint8)
