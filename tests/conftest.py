"""Test setup: without a GPU, Triton kernels run under the interpreter on CPU tensors. This has
to happen before unet_fast imports any kernel module, hence at the top of conftest.

On a GPU, fp32 convolutions and matrix products run in full precision (no TF32), ours and
the reference's alike, so the fp32 tolerances hold there too.

torch.compile tests compile afresh: inductor's on-disk caches do not key on a custom op's
C++ schema, so a cache from an older build could replay stale code.

The CPU convolutions run by the rule of unet_fast.tuning.cold_start, not by measurements
(UNET_FAST_TUNE=0), so that every test sees one algorithm per shape, whatever this machine's
timings; tests/test_tuning.py turns measuring on where it tests it, with its cache in a
temporary folder, never the user's."""

import contextlib
import os
import tempfile

os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
os.environ["UNET_FAST_TUNE"] = "0"
os.environ["UNET_FAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="unet_fast_test_cache_")

import torch  # noqa: E402

if torch.cuda.is_available():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unet_fast import settings  # noqa: E402
from unet_fast.ops import available_backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backends_for(op: str) -> list[str]:
    """Every backend that can run ``op`` on this machine's test device."""
    return available_backends(op, DEVICE)


def dtypes_passed_to(op_namespace: str, fn) -> dict[str, list]:
    """Runs fn() and returns, for each op of `op_namespace` it called (``unet_fast``), the
    dtypes of its tensor arguments, in order, of the first call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == op_namespace:
                seen.setdefault(func.__name__.split(".")[0], [a.dtype for a in args if isinstance(a, torch.Tensor)])
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def onednn_emulates(dtype: torch.dtype) -> bool:
    """Whether oneDNN only emulates this reduced-precision dtype on this CPU (no AVX-512), so
    the CPU backend computes in fp32 and rounds once."""
    supported = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
                 torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}[dtype]
    return not supported()


def cpu_has_avx512() -> bool:
    """Whether the CPU kernels run their AVX-512 loops and measured choices (False without the
    extension)."""
    from unet_fast.ops import backends

    if not backends.extension_loaded():
        return False
    from unet_fast import _C

    return _C.cpu_has_avx512()


@pytest.fixture
def device() -> torch.device:
    return DEVICE


class Environment:
    """Sets and removes unet_fast's environment switches for a test. The library reads them
    once (unet_fast.settings), so each change is read again at once, and so is its undoing."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self._patch = patch

    def setenv(self, name: str, value: str) -> None:
        self._patch.setenv(name, value)
        settings.reload()

    def delenv(self, name: str) -> None:
        self._patch.delenv(name, raising=False)
        settings.reload()

    @contextlib.contextmanager
    def context(self):
        """Changes undone when the block ends."""
        with pytest.MonkeyPatch.context() as patch:
            yield Environment(patch)
        settings.reload()


@pytest.fixture
def environment(monkeypatch):
    yield Environment(monkeypatch)
    monkeypatch.undo()
    settings.reload()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of a tiny network (widths 4, 8, 16) trained for two steps: something to
    export, load and predict with."""
    from unet_fast.checkpoint import TrainConfig
    from unet_fast.training import train

    folder = tmp_path_factory.mktemp("tiny_run")
    train(TrainConfig(widths=(4, 8, 16), tile=92, steps=2, synthetic_images=1, synthetic_size=96, val_every=0,
                      checkpoint_every=0), folder)
    return folder


@pytest.fixture(scope="session")
def large_cells(tmp_path_factory):
    """(path, array): a 3000 x 2500 uint16 image of cells (a synthetic one tiled), as Zarr."""
    zarr = pytest.importorskip("zarr")
    from unet_fast import data

    sample = data.synthetic_cells(500, 500, seed=11)
    image = np.tile((sample.image.clip(0, 2) * 2000 + 300).astype(np.uint16), (6, 5))
    path = tmp_path_factory.mktemp("large_cells") / "cells.zarr"
    zarr.create_array(str(path), shape=image.shape, chunks=(512, 512), dtype=image.dtype)[:] = image
    return path, image
