"""Where unet_fast's CPU ops run their threads.

On a machine shared with other processes, a neighbour that keeps one core busy leaves the OS
three threads for two CPUs when torch runs a thread a CPU (its default). The scheduler may then
keep two of torch's threads on one CPU for seconds, and the work gets one CPU instead of the one
and a half left to it. So at each of unet_fast's parallel regions, torch's other threads are
held on the CPUs other than the one the calling thread runs on, one to a CPU, until a region
finds the caller on another CPU. The calling thread itself is never held, so the threads and
processes it starts (DataLoader workers) inherit all its CPUs. It is done only where the threads
are exactly as many as the caller's CPUs; with CPUs to spare the OS can move a thread to a free
one, and it is left to.

``UNET_FAST_PIN_THREADS=0`` (read at the first op) or :func:`pin_threads` ``(False)`` leaves the
placement to the OS (docs/memory.md). Without the C++ extension there are no such regions, and
nothing is held."""

from __future__ import annotations

import torch

from unet_fast.ops import backends

__all__ = ["pin_threads", "placement_cpus", "threads_pinned"]


def threads_pinned() -> bool:
    """Whether the CPU ops hold their threads one to a CPU where they can."""
    if not backends.extension_loaded():
        return False
    from unet_fast import _C

    return _C.cpu_thread_placement()


def pin_threads(enabled: bool) -> None:
    """Turns the holding of threads one to a CPU on or off, for the regions that start next."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if backends.extension_loaded():
        from unet_fast import _C

        _C.cpu_set_thread_placement(enabled)


def placement_cpus(threads: int | None = None) -> list[int]:
    """The CPUs a region of ``threads`` threads (default: torch's) started on this thread would
    share out one to a thread (the caller's CPU at the time to the caller); ``[]`` where it
    leaves them to the OS."""
    threads = torch.get_num_threads() if threads is None else threads
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if not backends.extension_loaded():
        return []
    from unet_fast import _C

    return _C.cpu_placement_cpus(threads)
