"""The CPU buffer pool of unet_fast's ops.

On the CPU, glibc hands every large freed tensor back to the OS, so each new activation or
gradient pays a page fault per 4 KiB: about a fifth of a 572x572 training step. The C++ ops
therefore take their large buffers (1 MiB and up, theirs and those of the ATen calls they make)
from a pool that keeps freed blocks for reuse, at most twice its peak use. The pool counts in
the torch profiler's memory figures like the default allocator; what it keeps idle does not.
Set ``UNET_FAST_CPU_POOL=0`` before the first op runs to turn it off.
"""

from __future__ import annotations

from dataclasses import dataclass

from unet_fast.ops import backends

__all__ = ["CpuPoolStats", "cpu_pool_stats", "empty_cpu_pool"]


@dataclass(frozen=True)
class CpuPoolStats:
    in_use_bytes: int  # handed out to live tensors
    cached_bytes: int  # freed and kept for reuse


def cpu_pool_stats() -> CpuPoolStats:
    """What the pool holds now (zeros without the C++ extension)."""
    if not backends.extension_loaded():
        return CpuPoolStats(0, 0)
    from unet_fast import _C

    return CpuPoolStats(*_C.buffer_pool_stats())


def empty_cpu_pool() -> None:
    """Gives the pool's idle blocks back to the OS, e.g. after training."""
    if backends.extension_loaded():
        from unet_fast import _C

        _C.buffer_pool_empty_cache()
