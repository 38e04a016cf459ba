"""Images too big for memory, read and written a block at a time: Zarr (v2 and v3), OME-Zarr,
and TIFF/BigTIFF (tifffile's Zarr interface: the full-resolution level of a pyramid), as
stacks of 2D frames (frames, H, W). Nothing here reads a whole array.

Outputs are Zarr arrays chunked by the block, so each block is one chunk written by one task:
an OME-Zarr (``.ome.zarr``: the labels under ``labels/<name>`` with the image-label metadata
ome-zarr-py writes, the foreground probability as the image) or a plain Zarr array (``.zarr``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
TIFF_SUFFIXES = (".tif", ".tiff")


def _zarr():
    try:
        import zarr
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading and writing Zarr needs zarr: pip install 'unet_fast[large]'") from None
    return zarr


@dataclass
class LazyImage:
    """A stack of grey 2D frames on disk; ``read`` fetches one window of one frame."""

    array: Any  # indexable as array[frame, rows, cols] (or [rows, cols] when ``flat``)
    frames: int
    height: int
    width: int
    dtype: np.dtype
    flat: bool
    source: str

    def read(self, frame: int, rows: slice, cols: slice) -> np.ndarray:
        index = (rows, cols) if self.flat else (frame, rows, cols)
        return np.asarray(self.array[index])


def is_zarr(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def is_large_input(path: str | Path) -> bool:
    """Inputs that are read lazily: Zarr stores and TIFF files."""
    return is_zarr(path) or Path(path).suffix.lower() in TIFF_SUFFIXES


def open_image(path: str | Path) -> LazyImage:
    """The image at ``path``, opened without reading it: a Zarr array, an OME-Zarr image (its
    full-resolution level; axes of size 1 dropped) or a TIFF (its first series' full level)."""
    path = Path(path)
    if is_zarr(path):
        array, axes = _open_zarr(path)
    elif path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        array, axes = _open_tiff(path), None
    elif path.exists():
        raise ValueError(f"{path} is neither a Zarr store nor a TIFF file")
    else:
        raise FileNotFoundError(f"no image at {path}")
    return _as_frames(array, axes, str(path))


def _open_zarr(path: Path) -> tuple[Any, list[str] | None]:
    zarr = _zarr()
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None
    attributes = dict(node.attrs)
    multiscales = attributes.get("ome", attributes).get("multiscales")
    if not multiscales:
        arrays = [name for name, _ in node.arrays()]
        raise ValueError(f"{path} is a Zarr group without OME-Zarr multiscales metadata: name one of its arrays "
                         f"({', '.join(arrays) or 'it has none'}) as {path}/ARRAY")
    first = multiscales[0]
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in first.get("axes", [])] or None
    return node[first["datasets"][0]["path"]], axes


def _open_tiff(path: Path) -> Any:
    import tifffile

    zarr = _zarr()
    try:
        store = tifffile.imread(path, aszarr=True, level=0)
    except Exception as error:  # tifffile raises several types for files it cannot parse
        raise ValueError(f"cannot read TIFF {path}: {error}") from None
    array = zarr.open(store, mode="r")
    return array if isinstance(array, zarr.Array) else array["0"]


def _as_frames(array: Any, axes: list[str] | None, source: str) -> LazyImage:
    """Checks dtype and dimensions; keeps the last two axes as y, x and at most one other of
    size > 1 as frames (time or z); a channel axis must hold one channel."""
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uif":
        raise ValueError(f"{source} holds {dtype} values: expected integer or floating-point intensities")
    shape = tuple(array.shape)
    names = axes or [f"axis {i}" for i in range(len(shape))]
    if len(shape) < 2 or len(names) != len(shape):
        raise ValueError(f"{source} has shape {shape}: expected (y, x) or (frames, y, x)")
    channels = [n for n, size in zip(names, shape) if n == "c" and size > 1]
    if channels:
        raise ValueError(f"{source} has {shape[names.index('c')]} channels: unet_fast segments one grey channel")
    leading = [(i, size) for i, size in enumerate(shape[:-2]) if size > 1]
    if len(leading) > 1:
        raise ValueError(f"{source} has shape {shape}: expected (y, x) or (frames, y, x), with at most one axis "
                         "of more than one entry before y and x")
    if min(shape[-2:]) < 1:
        raise ValueError(f"{source} is empty: shape {shape}")
    if len(shape) == 2:
        return LazyImage(array, 1, shape[0], shape[1], dtype, True, source)
    squeezed = _Squeezed(array, len(shape), leading[0][0] if leading else None)
    return LazyImage(squeezed, leading[0][1] if leading else 1, shape[-2], shape[-1], dtype, False, source)


class _Squeezed:
    """An N-d array seen as (frames, y, x): axes of size 1 indexed at 0."""

    def __init__(self, array: Any, ndim: int, frame_axis: int | None):
        self.array, self.ndim, self.frame_axis = array, ndim, frame_axis

    def __getitem__(self, index: tuple[int, slice, slice]) -> np.ndarray:
        frame, rows, cols = index
        full = [frame if axis == self.frame_axis else 0 for axis in range(self.ndim - 2)]
        return np.asarray(self.array[(*full, rows, cols)])


@dataclass
class Outputs:
    """Where a blockwise run writes: final labels (for a TIFF, a Zarr array in the state folder
    until the end), the provisional per-block labels, the foreground probability (or None), and
    the state folder (finished-block records; removed at the end)."""

    labels: Any
    provisional: Any
    probability: Any | None
    state: Path
    store: Path
    kind: str  # "ome-zarr", "zarr" or "tiff"


STATE = ".unet_fast_blocks"  # inside the output store (beside a TIFF: NAME.tif.unet_fast_blocks)


def refuse_overlap(image: str | Path, out: str | Path) -> None:
    """An output that is the input, holds it or lies inside it would destroy it when written."""
    image, out = Path(image).resolve(), Path(out).resolve()
    if image == out or out in image.parents or image in out.parents:
        raise ValueError(f"--out {out} would write over or into the input {image}: choose another path")


def output_kind(path: str | Path) -> str:
    name = str(path).lower().rstrip("/")
    if name.endswith(".ome.zarr"):
        return "ome-zarr"
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise ValueError(f"--out {path}: a large image is written to NAME.ome.zarr, NAME.zarr or NAME.tif")


def create_outputs(path: str | Path, shape: tuple[int, int, int], block: int, *, probability: bool,
                   overwrite: bool, resume: bool, name: str = "cells") -> Outputs:
    """Creates (or, with ``resume``, reopens) the output store for labels of ``shape`` (frames,
    H, W) chunked by ``block``. Refuses an existing store unless ``overwrite`` or ``resume``."""
    zarr = _zarr()
    path = Path(path)
    kind = output_kind(path)
    if probability and kind != "ome-zarr":
        raise ValueError("--probabilities: only for an OME-Zarr --out (NAME.ome.zarr), where they are the image")
    state = path.with_name(path.name + STATE) if kind == "tiff" else path / STATE
    exists = path.exists()
    if resume:
        if not state.is_dir():
            raise FileNotFoundError(f"--resume: {path} holds no unfinished run to resume")
    elif exists:
        if not overwrite:
            raise FileExistsError(f"--out {path} exists: choose another, or pass --overwrite to replace it")
        _remove(path)
        _remove(state)
    mode = "r+" if resume else "w"
    chunks = (1, block, block)
    labels = probability_array = None
    if kind == "tiff":  # written into the TIFF once all blocks are final
        state.mkdir(parents=True, exist_ok=True)
        labels = zarr.open_array(str(state / "labels.zarr"), mode=mode, shape=shape, chunks=chunks, dtype=np.uint32,
                                 fill_value=0)
    elif kind == "zarr":
        labels = zarr.open_array(str(path), mode=mode, shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)
    elif kind == "ome-zarr":
        root = zarr.open_group(str(path), mode="a" if resume else "w")
        if resume:
            labels = root[f"labels/{name}/0"]
            probability_array = root["0"] if probability else None
        else:
            labels = root.create_array(f"labels/{name}/0", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)
            if probability:
                probability_array = root.create_array("0", shape=shape, chunks=chunks, dtype=np.float32,
                                                      fill_value=0.0)
            _write_ome_metadata(root, name, probability)
    # after the store: creating it ("w") empties its folder
    state.mkdir(parents=True, exist_ok=True)
    provisional = zarr.open_array(str(state / "provisional.zarr"), mode=mode, shape=shape, chunks=chunks,
                                  dtype=np.uint32, fill_value=0)
    return Outputs(labels, provisional, probability_array, state, path, kind)


def _write_ome_metadata(root: Any, name: str, probability: bool) -> None:
    """NGFF metadata through ome-zarr-py's own writers: the label image with its image-label
    metadata, the ``labels`` group naming it, and the probability image at the root."""
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]
    write_multiscales_metadata(root[f"labels/{name}"], datasets, axes=axes, name=name)
    write_label_metadata(root["labels"], name=name, source={"image": "../../"})
    if probability:
        write_multiscales_metadata(root, datasets, axes=axes, name="foreground probability")


def write_bigtiff(path: Path, labels: Any, block: int) -> None:
    """The (frames, H, W) uint32 labels as a tiled BigTIFF, written tile by tile from the Zarr
    array (a tile is a block, or 1024 pixels where a block is larger)."""
    import tifffile

    frames, height, width = labels.shape
    side = min(block, 1024) // 16 * 16 or 16

    def tiles():
        for frame in range(frames):
            for top in range(0, height, side):
                for left in range(0, width, side):
                    piece = np.zeros((side, side), np.uint32)
                    window = np.asarray(labels[frame, top:top + side, left:left + side])
                    piece[:window.shape[0], :window.shape[1]] = window
                    yield piece

    from unet_fast import files

    with files.atomic_path(path) as temporary:
        tifffile.imwrite(temporary, tiles(), shape=(frames, height, width), dtype=np.uint32, tile=(side, side),
                         bigtiff=True, photometric="minisblack", compression="zlib")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
