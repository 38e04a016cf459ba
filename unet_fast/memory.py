"""The CPU buffer pool of unet_fast's ops.

On the CPU, glibc hands every large freed tensor back to the OS, so each new activation or
gradient pays a page fault per 4 KiB: about a fifth of a 572x572 training step. The C++ ops
therefore take their large buffers (1 MiB and up, theirs and those of the ATen calls they make)
from a pool that keeps freed blocks for reuse. It sits in front of torch's CPU allocator from
the first op on, and serves only the allocations made inside unet_fast's ops, on the thread
that runs them, and inside :func:`pooled_cpu_allocations` (the model's 1x1 head); everything
else passes through untouched.

What it holds, in use and idle, never exceeds the most it ever had in use at once (one
step's need), and a block left idle for ``UNET_FAST_CPU_POOL_IDLE_S`` seconds (default 30;
:func:`set_cpu_pool_idle_seconds`) goes back to the OS, with glibc's free heap: all of them
soon after the ops stop, and in a loop that runs on, those it no longer uses (such as the
extra buffers of the algorithms :mod:`unet_fast.tuning` tried on the first steps). It is
fork-safe (DataLoader workers). The pool counts in the torch profiler's memory
figures like the default allocator; what it keeps idle does not, but the OS sees it.
Set ``UNET_FAST_CPU_POOL=0`` before the first op runs to turn it off.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

from unet_fast.ops import backends

__all__ = ["CpuPoolStats", "cpu_pool_stats", "empty_cpu_pool", "pooled_cpu_allocations", "set_cpu_pool_idle_seconds"]


@dataclass(frozen=True)
class CpuPoolStats:
    in_use_bytes: int  # handed out to live tensors
    cached_bytes: int  # freed and kept for reuse
    peak_in_use_bytes: int  # the most ever in use at once: the bound on in use + cached


def cpu_pool_stats() -> CpuPoolStats:
    """What the pool holds now (zeros without the C++ extension or before the first op)."""
    if not backends.extension_loaded():
        return CpuPoolStats(0, 0, 0)
    from unet_fast import _C

    return CpuPoolStats(*_C.buffer_pool_stats())


def empty_cpu_pool() -> None:
    """Gives the pool's idle blocks back to the OS now, e.g. after training."""
    if backends.extension_loaded():
        from unet_fast import _C

        _C.buffer_pool_empty_cache()


def set_cpu_pool_idle_seconds(seconds: float) -> None:
    """Seconds a block may stay idle in the pool before it goes back to the OS (0: at once)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if backends.extension_loaded():
        from unet_fast import _C

        _C.buffer_pool_set_idle_seconds(float(seconds))


@contextlib.contextmanager
def pooled_cpu_allocations() -> Iterator[None]:
    """Within it, this thread's CPU allocations of 1 MiB and more come from the pool, as inside
    the C++ ops: for the few ATen calls the model makes itself (without the extension, nothing
    changes)."""
    if not backends.extension_loaded():
        yield
        return
    from unet_fast import _C

    guard = _C.buffer_pool_guard()
    try:
        yield
    finally:
        del guard
