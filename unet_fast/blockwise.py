"""Segmenting images of any size a block at a time, on one machine or a dask cluster.

Two passes over blocks of ``block`` x ``block`` pixels (a multiple of the tile stride, so a
block's tiles are the tiles overlap-tile inference takes on the whole image, and its logits
equal that window of the whole image's):

1. each block: read the window its tiles need (the block, the network's margin, mirrored at the
   image's borders), normalise it by the whole frame's percentiles, run the network, label the
   foreground's connected components, write them (numbered within the block) and record the
   count and the four edges;
2. the edges say which block labels touch across a border (4-connected, as the labelling): a
   union-find over them (scipy's connected components of that graph) gives every object one
   final number, and each block is rewritten with it.

The labels are then the connected components of the whole image's foreground, whatever the
block size; memory holds a block and the network, never the image. Every block records when it
is done, so an interrupted run resumes where it stopped, and blocks are independent tasks that
a ``dask.distributed`` cluster runs on its workers, each loading the network once.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from unet_fast import data, files, stores
from unet_fast.run_folder import held_lock
from unet_fast.tiling import default_tile, model_geometry, predict_region, tile_reach, tile_stride

PERCENTILES = data.PERCENTILES
EXACT_PIXELS = 1 << 24  # frames up to this size get exact percentiles whatever their dtype
BLOCK = 2048  # default block side, rounded down to a multiple of the tile stride


@dataclass(frozen=True)
class Job:
    """Everything a block's task needs, as plain data (tasks run in other processes)."""

    network: str  # a checkpoint (run folder or model.pt), a package's rdf.yaml or an .onnx file
    image: str
    out: str
    shape: tuple[int, int, int]  # frames, H, W
    block: int
    tile: int
    batch_size: int
    probability: bool
    ranges: tuple[tuple[float, float], ...]  # per frame: the intensities mapped to 0 and 1
    threads: int | None  # torch threads per task (None: torch's default)


def segment_large(network: str | Path, image: str | Path, out: str | Path, *, tile: int | None = None,
                  block: int | None = None, batch_size: int = 1, probability: bool = False, overwrite: bool = False,
                  resume: bool = False, client=None, threads: int | None = None, progress: bool = False) -> dict:
    """Segments the image at ``image`` (Zarr, OME-Zarr or TIFF) block by block into ``out``
    (NAME.ome.zarr, NAME.zarr or NAME.tif); ``client``: a dask.distributed Client to run the
    blocks on, ``threads`` torch threads each. Returns a summary: objects per frame, blocks,
    seconds, pixels per second."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside the store: creating or replacing the store empties its folder
    with held_lock(out.with_name(f".{out.name}.lock"), out):
        return _segment_large(network, image, out, tile=tile, block=block, batch_size=batch_size,
                              probability=probability, overwrite=overwrite, resume=resume, client=client,
                              threads=threads, progress=progress)


def _segment_large(network, image, out, *, tile, block, batch_size, probability, overwrite, resume, client, threads,
                   progress) -> dict:
    begin = time.perf_counter()
    stores.refuse_overlap(image, out)
    lazy = stores.open_image(image)
    model = load_network(str(network))
    geometry = model_geometry(model)
    tile = tile or default_tile(geometry, max(lazy.height, lazy.width))
    stride = tile_stride(geometry, tile)
    block = _block_side(block, stride)
    shape = (lazy.frames, lazy.height, lazy.width)
    outputs = stores.create_outputs(out, shape, block, probability=probability, overwrite=overwrite, resume=resume)
    job = Job(str(network), str(image), str(out), shape, block, tile, batch_size, probability, (), threads)
    job = replace(job, ranges=_ranges(outputs.state, lazy, resume))
    blocks = block_grid(shape, block)
    _run(segment_block, job, [b for b in blocks if not _record(outputs.state, "pass1", b).exists()], client,
         progress, "blocks")
    tables = relabelling_tables(job, outputs.state, blocks)
    _run(functools.partial(relabel_block, tables=tables), job,
         [b for b in blocks if not _record(outputs.state, "pass2", b).exists()], client, progress, "relabel")
    _finish(outputs, job)
    seconds = time.perf_counter() - begin
    objects = [int(relabelling.table.max(initial=0)) for relabelling in tables]
    return {"objects": objects, "blocks": len(blocks), "block": block,
            "tile": tile, "seconds": seconds, "pixels_per_second": math.prod(shape) / seconds}


def _block_side(block: int | None, stride: int) -> int:
    if block is not None and block < stride:
        raise ValueError(f"--block {block} is smaller than one tile's stride ({stride} pixels)")
    return stride * max(1, (block or BLOCK) // stride)


def block_grid(shape: tuple[int, int, int], block: int) -> list[tuple[int, int, int]]:
    """(frame, top, left) of every block, frame by frame, row by row."""
    frames, height, width = shape
    return [(f, y, x) for f in range(frames) for y in range(0, height, block) for x in range(0, width, block)]


def _run(task, job: Job, blocks: list, client, progress: bool, what: str) -> None:
    """Runs ``task(job, block)`` for every block: here in order, or on the cluster."""
    from tqdm.auto import tqdm

    if client is None:
        for block in tqdm(blocks, desc=what, unit="block", disable=not progress, leave=False):
            task(job, block)
        return
    from distributed import progress as dask_progress, wait

    futures = client.map(functools.partial(task, job), blocks, pure=False)
    if progress:
        dask_progress(futures)
    wait(futures)
    for future in futures:
        future.result()  # raises a task's error here


@functools.lru_cache(maxsize=2)
def load_network(source: str) -> torch.nn.Module:
    """The network at ``source``, loaded once per process (each dask worker keeps its own)."""
    from unet_fast.checkpoint import load_model
    from unet_fast.runtimes import load_exported

    path = Path(source)
    if path.suffix.lower() in (".onnx", ".yaml", ".yml") or (path / "rdf.yaml").is_file():
        return load_exported(path)
    return load_model(path, "cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=2)
def _outputs(job: Job) -> stores.Outputs:
    """The run's outputs, opened once per process."""
    return stores.create_outputs(job.out, job.shape, job.block, probability=job.probability, overwrite=False,
                                 resume=True)


@functools.lru_cache(maxsize=2)
def _image(path: str) -> stores.LazyImage:
    return stores.open_image(path)


def segment_block(job: Job, block: tuple[int, int, int]) -> None:
    """Pass 1 for one block: the network's foreground there, written by :func:`write_block`."""
    lazy, outputs = _image(job.image), _outputs(job)
    model = load_network(job.network)
    if job.threads:
        torch.set_num_threads(job.threads)
    frame, top, left = block
    _, height, width = job.shape
    box = (top, left, min(job.block, height - top), min(job.block, width - left))
    rows, cols = tile_reach(model_geometry(model), job.tile, (height, width), box)
    low, high = job.ranges[frame]
    pixels = _finite(lazy.read(frame, rows, cols).astype(np.float32), lazy, frame)
    region = torch.from_numpy(((pixels - low) / max(high - low, 1e-6)).astype(np.float32))[None]

    def read(row_indices: torch.Tensor, col_indices: torch.Tensor) -> torch.Tensor:
        return region.index_select(-2, row_indices - rows.start).index_select(-1, col_indices - cols.start)

    logits = predict_region(model, read, (height, width), box, tile=job.tile, batch_size=job.batch_size)
    probability = torch.softmax(logits, 0)[1].numpy() if outputs.probability is not None else None
    write_block(job, block, logits.argmax(0).numpy(), probability)


def write_block(job: Job, block: tuple[int, int, int], foreground: np.ndarray,
                probability: np.ndarray | None = None) -> None:
    """Pass 1's output for one block: the foreground's 4-connected components, numbered from 1
    within the block, and the record that the block is done (its count and four edges)."""
    from scipy import ndimage

    outputs = _outputs(job)
    frame, top, left = block
    labels, count = ndimage.label(foreground)
    labels = labels.astype(np.uint32)
    window = (frame, slice(top, top + labels.shape[0]), slice(left, left + labels.shape[1]))
    outputs.provisional[window] = labels
    if probability is not None:
        outputs.probability[window] = probability
    path = _record(outputs.state, "pass1", block)
    with files.atomic_path(path) as temporary:
        np.savez(temporary, count=count, top=labels[0], bottom=labels[-1], left=labels[:, 0], right=labels[:, -1])


@dataclass
class Relabelling:
    """A frame's final label for each provisional one, at ``offsets[block] + local``."""

    table: np.ndarray
    offsets: dict


def relabelling_tables(job: Job, state: Path, blocks: list[tuple[int, int, int]]) -> list[Relabelling]:
    """Per frame: objects that touch across a block border get one label, 1..K in the order
    of their first block and label there; 0 stays background."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    records = {b: _load_record(state, b) for b in blocks}
    relabellings = []
    for frame in range(job.shape[0]):
        mine = [b for b in blocks if b[0] == frame]
        counts = [int(records[b]["count"]) for b in mine]
        offsets = {b: int(offset) for b, offset in zip(mine, np.cumsum([0, *counts[:-1]]))}
        total = sum(counts)
        pairs = [np.empty((0, 2), np.int64)]
        for b in mine:
            for neighbour, edge, facing in (((frame, b[1], b[2] + job.block), "right", "left"),
                                            ((frame, b[1] + job.block, b[2]), "bottom", "top")):
                if neighbour in offsets:
                    here, there = records[b][edge].astype(np.int64), records[neighbour][facing].astype(np.int64)
                    touching = (here > 0) & (there > 0)
                    pairs.append(np.stack([here[touching] + offsets[b], there[touching] + offsets[neighbour]], 1))
        edges = np.unique(np.concatenate(pairs), axis=0)
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(total + 1, total + 1))
        _, component = connected_components(graph, directed=False)
        objects, first = np.unique(component[1:], return_index=True)
        number = np.zeros(component.max() + 1, np.uint32)
        number[objects[np.argsort(first)]] = np.arange(1, len(objects) + 1, dtype=np.uint32)
        relabellings.append(Relabelling(np.concatenate([[0], number[component[1:]]]).astype(np.uint32), offsets))
    return relabellings


def relabel_block(job: Job, block: tuple[int, int, int], tables: list[Relabelling]) -> None:
    """Pass 2 for one block: its provisional labels replaced by the final ones."""
    outputs = _outputs(job)
    frame, top, left = block
    _, height, width = job.shape
    window = (frame, slice(top, min(top + job.block, height)), slice(left, min(left + job.block, width)))
    local = np.asarray(outputs.provisional[window]).astype(np.int64)
    relabelling = tables[frame]
    outputs.labels[window] = np.where(local > 0, relabelling.table[local + relabelling.offsets[block]], 0)
    _record(outputs.state, "pass2", block).touch()


def _record(state: Path, stage: str, block: tuple[int, int, int]) -> Path:
    folder = state / stage
    folder.mkdir(exist_ok=True)
    return folder / ("{}_{}_{}".format(*block) + (".npz" if stage == "pass1" else ".done"))


def _load_record(state: Path, block: tuple[int, int, int]) -> dict:
    with np.load(_record(state, "pass1", block)) as record:
        return {key: record[key] for key in record.files}


def _ranges(state: Path, lazy: stores.LazyImage, resume: bool) -> tuple[tuple[float, float], ...]:
    """Per frame, the intensities at PERCENTILES (kept in the run's state, so a resumed run
    normalises as it began)."""
    path = state / "ranges.json"
    if resume and path.is_file():
        return tuple(tuple(pair) for pair in json.loads(path.read_text()))
    ranges = tuple(frame_range(lazy, frame) for frame in range(lazy.frames))
    with files.atomic_path(path) as temporary:
        temporary.write_text(json.dumps(ranges))
    return ranges


def frame_range(lazy: stores.LazyImage, frame: int, block: int = BLOCK) -> tuple[float, float]:
    """The frame's intensities at PERCENTILES, read a block at a time: exact (numpy's linear
    interpolation) for 8- and 16-bit integers, by a histogram, and for frames of up to
    EXACT_PIXELS pixels; else estimated from an even grid of at least EXACT_PIXELS pixels."""
    windows = [(slice(y, y + block), slice(x, x + block))
               for y in range(0, lazy.height, block) for x in range(0, lazy.width, block)]
    if lazy.dtype.kind in "ui" and lazy.dtype.itemsize <= 2:
        lowest = int(np.iinfo(lazy.dtype).min)
        counts = np.zeros(1 << (8 * lazy.dtype.itemsize), np.int64)
        for rows, cols in windows:
            values = lazy.read(frame, rows, cols).astype(np.int64).ravel() - lowest
            counts += np.bincount(values, minlength=len(counts))
        return _percentiles_of_histogram(counts, lowest)
    if lazy.height * lazy.width <= EXACT_PIXELS:
        whole = _finite(np.concatenate([lazy.read(frame, r, c).astype(np.float32).ravel() for r, c in windows]),
                        lazy, frame)
        return tuple(float(v) for v in np.percentile(whole, PERCENTILES))
    step = math.ceil(math.sqrt(lazy.height * lazy.width / EXACT_PIXELS))
    sample = _finite(np.concatenate([lazy.read(frame, r, c)[-r.start % step::step, -c.start % step::step]
                                     .astype(np.float32).ravel() for r, c in windows]), lazy, frame)
    return tuple(float(v) for v in np.percentile(sample, PERCENTILES))


def _finite(pixels: np.ndarray, lazy: stores.LazyImage, frame: int) -> np.ndarray:
    """``pixels``, refused if any is NaN or infinite (the frame's normalisation, and with it
    every object, would be lost)."""
    if not np.isfinite(pixels).all():
        raise ValueError(f"{lazy.source} holds NaN or infinite values (frame {frame}): replace them before "
                         "segmenting")
    return pixels


def _percentiles_of_histogram(counts: np.ndarray, lowest: int) -> tuple[float, float]:
    """np.percentile's linear method from value counts: the order statistics either side of
    q/100 * (n - 1), interpolated as numpy does."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    result = []
    for q in PERCENTILES:
        position = q / 100 * (n - 1)
        below = math.floor(position)
        fraction = position - below
        a, b = (float(np.searchsorted(cumulative, k, side="right") + lowest) for k in (below, min(below + 1, n - 1)))
        result.append(b - (b - a) * (1 - fraction) if fraction >= 0.5 else a + (b - a) * fraction)
    return result[0], result[1]


def _finish(outputs: stores.Outputs, job: Job) -> None:
    """A TIFF output is written from the finished labels; the run's state goes."""
    if outputs.kind == "tiff":
        stores.write_bigtiff(outputs.store, outputs.labels, job.block)
    shutil.rmtree(outputs.state)
    _outputs.cache_clear()
    _image.cache_clear()
