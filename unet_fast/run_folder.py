"""A training run's folder, held by one run at a time.

``unet-fast train`` writes its checkpoints and plots into ``--out``. Two runs into one folder
would overwrite each other's checkpoints, so the folder is locked (``fcntl.flock`` on a lock
file that names the holding process) for as long as a run lives; the kernel drops the lock if
the process dies. Taking it also proves the folder writable before the first step, and lets
the run remove the temporary files a killed save left behind (no other run can be writing
them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".unet_fast.lock"


@contextlib.contextmanager
def locked_run_folder(path: str | Path, written: tuple[str, ...]) -> Iterator[Path]:
    """Creates `path` if needed and holds it for the block; raises FileExistsError naming the
    process that holds it, and removes stale temporaries of the files in `written`."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot write into --out {folder}: {error.strerror}") from error
    with held_lock(folder / LOCK_NAME, folder):
        _remove_stale_temporaries(folder, written)
        yield folder


@contextlib.contextmanager
def held_lock(lock: Path, out: Path) -> Iterator[None]:
    """Holds ``lock`` (a file naming the holding process) for the block; FileExistsError if
    another run holds it, naming that run's ``--out`` and process."""
    try:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise PermissionError(f"cannot write into --out {out}: {error.strerror}") from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FileExistsError(f"--out {out} is in use by another unet-fast run (process {holder})") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)  # releases the lock


def _remove_stale_temporaries(folder: Path, written: tuple[str, ...]) -> None:
    """The temporaries of files.atomic_path (``.NAME.XXXXXXXX<suffix>``) left by a killed run."""
    for name in written:
        for stale in folder.glob(f".{name}.*{Path(name).suffix}"):
            stale.unlink(missing_ok=True)
