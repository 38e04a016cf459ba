"""Blocks on a dask.distributed cluster: the single-process result, also when a worker dies
mid-run; an unreachable scheduler is a clear error in seconds."""

import os
import signal
import threading
import time

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")

from unet_fast import blockwise, data, stores  # noqa: E402
from unet_fast.checkpoint import TrainConfig  # noqa: E402
from unet_fast.clusters import cluster_client  # noqa: E402
from unet_fast.training import train  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    train(TrainConfig(widths=(4, 8, 16), tile=92, steps=3, synthetic_images=1, synthetic_size=96, val_every=0,
                      checkpoint_every=0), root / "run")
    image = np.tile((data.synthetic_cells(400, 400, seed=4).image.clip(0, 2) * 2000).astype(np.uint16), (5, 4))
    zarr.create_array(str(root / "image.zarr"), shape=image.shape, chunks=(400, 400), dtype=image.dtype)[:] = image
    blockwise.segment_large(root / "run", root / "image.zarr", root / "single.zarr", tile=252, block=424,
                            batch_size=1)
    return root, zarr.open_array(str(root / "single.zarr"), mode="r")[:]


def test_a_local_cluster_gives_the_single_process_result(setup):
    root, single = setup
    with cluster_client(None, 2) as (client, threads):
        assert len(client.scheduler_info()["workers"]) == 2 and threads >= 1
        blockwise.segment_large(root / "run", root / "image.zarr", root / "dask.zarr", tile=252, block=424,
                                batch_size=1, client=client, threads=threads)
    np.testing.assert_array_equal(zarr.open_array(str(root / "dask.zarr"), mode="r")[:], single)


def test_a_worker_killed_mid_run_has_its_blocks_recomputed(setup):
    root, single = setup
    out = root / "killed.zarr"
    with cluster_client(None, 2) as (client, threads):
        errors = []

        def segment():
            try:
                blockwise.segment_large(root / "run", root / "image.zarr", out, tile=252, block=424, batch_size=1,
                                        client=client, threads=threads)
            except Exception as error:  # reported below
                errors.append(error)

        worker = threading.Thread(target=segment)
        worker.start()
        records = out / stores.STATE / "pass1"
        deadline = time.monotonic() + 120
        while not (records.is_dir() and any(records.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = sorted(client.run(os.getpid).values())[0]
        os.kill(victim, signal.SIGKILL)  # its running and finished-but-unsaved tasks are lost
        worker.join(timeout=300)
        assert not worker.is_alive() and not errors, errors
        assert victim not in client.run(os.getpid).values()  # the nanny started a new worker
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], single)


def test_an_unreachable_scheduler_is_reported_within_seconds():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="--scheduler tcp://127.0.0.1:9: cannot reach a dask scheduler"):
        with cluster_client("tcp://127.0.0.1:9", None, connect_seconds=2):
            pass
    assert time.monotonic() - start < 15
