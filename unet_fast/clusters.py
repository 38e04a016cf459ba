"""dask.distributed clusters for blockwise segmentation: a scheduler the user runs, or a local
cluster of worker processes started for one run."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

CONNECT_SECONDS = 10  # an unreachable scheduler is reported after this long, not waited on


@contextlib.contextmanager
def cluster_client(scheduler: str | None, workers: int | None, connect_seconds: float = CONNECT_SECONDS
                   ) -> Iterator[tuple[object | None, int | None]]:
    """(client, torch threads per task): no client without ``scheduler`` or ``workers``; a
    local cluster of ``workers`` single-task processes sharing this machine's cores; or a
    client of the scheduler at ``scheduler`` (its workers keep their own thread counts)."""
    if scheduler is None and workers is None:
        yield None, None
        return
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError:
        raise ModuleNotFoundError("--scheduler and --workers need dask.distributed: pip install 'unet_fast[large]'") \
            from None
    if workers is not None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        threads = max(1, (os.cpu_count() or 1) // workers)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client, threads
        return
    try:
        client = Client(scheduler, timeout=f"{connect_seconds}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise ConnectionError(f"--scheduler {scheduler}: cannot reach a dask scheduler there within "
                              f"{connect_seconds:g} s ({type(error).__name__}: {error})") from None
    with client:
        yield client, None
