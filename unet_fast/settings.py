"""unet_fast's environment switches, read once.

The first op that needs them reads them all, and every later call sees those values: a
program that sets ``os.environ`` halfway through a run cannot switch algorithms or backends
under a model in training, and a compiled graph keeps what it was traced with. :func:`reload`
makes the next use read them again (tests; programs that set them after their first op).

- ``UNET_FAST_BACKEND``: the backend of every op called without ``backend=`` (``cpu``,
  ``cuda``, ``triton``, ``torch``; unset or ``auto``: the tensor's device decides).
- ``UNET_FAST_TUNE=0``: the built-in rule for every convolution pass, no timing, no cache.
- ``UNET_FAST_CACHE_DIR``: where measured choices are kept (default
  ``$XDG_CACHE_HOME/unet_fast`` or ``~/.cache/unet_fast``).
- ``UNET_FAST_WINOGRAD=0/2/4/6``: direct or one Winograd block for every fp32/fp64 pass.

The C++ buffer pool reads its own two (``UNET_FAST_CPU_POOL``, ``UNET_FAST_CPU_POOL_IDLE_S``)
once, when it is first used, and the Winograd convolutions ``UNET_FAST_POINT_GEMM`` at their
first call: ``0`` makes their transform-domain products by ATen's GEMM instead of unet_fast's
AVX-512 or AVX2 kernel, ``avx2`` takes the AVX2 kernel on a CPU with AVX-512 too. ``UNET_FAST_PIN_THREADS=0``
(read at the first op) leaves the ops' threads where the OS puts them (:mod:`unet_fast.threads`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str  # "auto" when unset; checked where it is used, naming the variable
    tune: bool
    cache_dir: Path
    winograd: str  # "" when unset; checked where it is used


@functools.cache
def current() -> Settings:
    """The switches as the environment held them at the first call (or after :func:`reload`)."""
    environ = os.environ
    if environ.get("UNET_FAST_CACHE_DIR"):
        cache_dir = Path(environ["UNET_FAST_CACHE_DIR"])
    else:
        cache_dir = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unet_fast"
    return Settings(backend=environ.get("UNET_FAST_BACKEND") or "auto",
                    tune=environ.get("UNET_FAST_TUNE", "1") != "0",
                    cache_dir=cache_dir,
                    winograd=environ.get("UNET_FAST_WINOGRAD", ""))


def reload() -> None:
    """Reads the environment again at the next use."""
    current.cache_clear()
