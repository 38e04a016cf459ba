"""Blockwise segmentation of a large image against the in-memory path on an image that fits:
reading, normalising, the network over the same tiles and labelling, per block and stitched
(``unet_fast.segment_large`` from Zarr to Zarr) against ``predict_tiled`` and one labelling of
the whole image. The two alternate in one process; the ratio of medians is the figure."""

import statistics
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

zarr = pytest.importorskip("zarr")

from unet_fast import blockwise, data  # noqa: E402
from unet_fast.checkpoint import TrainConfig, save_checkpoint  # noqa: E402
from unet_fast.tiling import predict_tiled  # noqa: E402

from conftest import rounds  # noqa: E402

SIDES = [1024, 3072]
QUICK = {"side": [1024]}
WIDTHS = (16, 32, 64, 128)  # the demo's network


@pytest.mark.parametrize("side", SIDES)
def test_blockwise_throughput_against_predict_tiled(side, tmp_path):
    config = TrainConfig(widths=WIDTHS, tile=572)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", config=config, model=config.build_model(),
                    optimizer=torch.optim.SGD(config.build_model().parameters(), lr=0.1), step=0,
                    history={"loss": [], "validation": []})
    cells = data.synthetic_cells(1024, 1024, seed=1).image.clip(0, 2)
    image = np.tile((cells * 3000 + 300).astype(np.uint16), (side // 1024, side // 1024))
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(1024, 1024),
                      dtype=image.dtype)[:] = image
    model = blockwise.load_network(str(tmp_path / "model.pt"))

    def in_memory():
        low, high = np.percentile(image.astype(np.float32), blockwise.PERCENTILES)
        normalised = ((image.astype(np.float32) - low) / max(high - low, 1e-6)).astype(np.float32)
        ndimage.label(predict_tiled(model, normalised, tile=572).argmax(0).numpy())

    def block_by_block():
        blockwise.segment_large(tmp_path / "model.pt", tmp_path / "image.zarr", tmp_path / "labels.zarr", tile=572,
                                overwrite=True)

    times = {in_memory: [], block_by_block: []}
    in_memory(), block_by_block()  # warm-up: the convolution algorithms are measured here
    for _ in range(rounds(3)):
        for run in (in_memory, block_by_block):
            start = time.perf_counter()
            run()
            times[run].append(time.perf_counter() - start)
    ratio = statistics.median(times[in_memory]) / statistics.median(times[block_by_block])
    print(f"\n{side}x{side}: in memory {statistics.median(times[in_memory]):.2f} s, block by block "
          f"{statistics.median(times[block_by_block]):.2f} s: throughput ratio {ratio:.2f}")
    assert ratio > 0.5  # a regression guard; the goal (>= 0.9) is measured by the full run
