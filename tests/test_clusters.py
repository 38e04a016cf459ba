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

from unet_fast import blockwise, stores  # noqa: E402
from unet_fast.clusters import cluster_client  # noqa: E402


@pytest.fixture(scope="module")
def setup(tiny_run, large_cells, tmp_path_factory):
    """The single-process result on the image whose partition test_blockwise.py checks against
    the whole image's: (folder, image path, labels)."""
    root = tmp_path_factory.mktemp("cluster")
    blockwise.segment_large(tiny_run, large_cells[0], root / "single.zarr", tile=252, block=636)
    return root, large_cells[0], zarr.open_array(str(root / "single.zarr"), mode="r")[:]


def test_a_local_cluster_gives_the_single_process_result(tiny_run, setup):
    root, image, single = setup
    with cluster_client(None, 2) as (client, threads):
        assert len(client.scheduler_info()["workers"]) == 2 and threads >= 1
        blockwise.segment_large(tiny_run, image, root / "dask.zarr", tile=252, block=636,
                                client=client, threads=threads)
    np.testing.assert_array_equal(zarr.open_array(str(root / "dask.zarr"), mode="r")[:], single)


def test_a_worker_killed_mid_run_has_its_blocks_recomputed(tiny_run, setup):
    root, image, single = setup
    out = root / "killed.zarr"
    with cluster_client(None, 2) as (client, threads):
        errors = []

        def segment():
            try:
                blockwise.segment_large(tiny_run, image, out, tile=252, block=636,
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
