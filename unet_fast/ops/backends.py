"""Which kernel runs an op: the backend named by argument, by ``UNET_FAST_BACKEND``, or the
default for the tensor's device.

Backends:
  ``cpu``    the C++ kernels of ``unet_fast._C`` on CPU tensors;
  ``cuda``   the CUDA C++ kernels, when the extension was built with ``UNET_FAST_CUDA=1``;
  ``triton`` the Triton kernels on CUDA tensors, or on CPU tensors under the Triton
             interpreter (``TRITON_INTERPRET=1`` set before unet_fast imports its kernels);
  ``torch``  the composite of stock PyTorch ops: the reference, and the fallback when the
             extension is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import warnings

import torch

from unet_fast import settings

BACKENDS = ("cpu", "cuda", "triton", "torch")
ENV_VAR = "UNET_FAST_BACKEND"
# The Triton convolutions have never been timed on a GPU: until they are, CUDA tensors take
# cuDNN's convolution (the "cuda" backend with its fused passes, else stock PyTorch's), and
# these run on Triton only when asked for.
_TRITON_ONLY_ON_REQUEST = ("conv3x3_bias_relu", "crop_concat_conv3x3")


def constant_when_compiled(fn):
    """``torch.compiler.assume_constant_result(fn)``, without importing torch._dynamo (about
    145 MB resident) into processes that never compile: where it is not imported yet, this
    sets the same marker that decorator sets, which dynamo reads when it traces."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@functools.cache
def extension_loaded() -> bool:
    """Imports ``unet_fast._C`` (which registers the C++ ops) and says whether that worked."""
    try:
        import unet_fast._C  # noqa: F401
    except ImportError as error:
        warnings.warn(
            f"unet_fast's C++ extension is not available ({error}); running the composite "
            "'torch' backend instead. Reinstall with `pip install --no-build-isolation .` "
            "to build it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


@functools.cache
def triton_interpreted() -> bool:
    """True when unet_fast's Triton kernels run under the interpreter (on CPU tensors)."""
    from unet_fast.kernels import INTERPRETED

    return INTERPRETED


@functools.cache
def _has_triton_kernel(op: str) -> bool:
    """True when ``op`` has a Triton custom op (``unet_fast::<op>_triton``) and Triton is installed:
    asked once (looking for Triton on the path took 0.25 ms, an op's whole time at 16 x 10 x 10)."""
    return importlib.util.find_spec("triton") is not None and hasattr(torch.ops.unet_fast, f"{op}_triton")


@functools.cache
def _has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered ``op`` for ``dispatch_key``: asked once, of torch's
    private dispatcher query; without it, whether the op exists at all (the CPU build
    registers every op for CPU, a CUDA build for CUDA too)."""
    if not extension_loaded():
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"unet_fast::{op}", dispatch_key)
    except AttributeError:
        return hasattr(torch.ops.unet_fast, op) and (dispatch_key == "CPU" or torch.cuda.is_available())


def available_backends(op: str, device: torch.device | str) -> list[str]:
    """The backends that can run ``op`` on tensors of ``device``, preferred first."""
    device = torch.device(device)
    found = []
    if device.type == "cpu" and _has_kernel(op, "CPU"):
        found.append("cpu")
    if device.type == "cuda" and _has_kernel(op, "CUDA"):
        found.append("cuda")
    if device.type == "cuda" and _has_triton_kernel(op):
        found.append("triton")
    if device.type == "cpu" and _has_triton_kernel(op) and triton_interpreted():
        found.append("triton")
    found.append("torch")
    return found


def _default_backend(op: str, device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu" if _has_kernel(op, "CPU") else "torch"
    if device.type == "cuda":
        preferred = [b for b in available_backends(op, device) if b != "triton" or op not in _TRITON_ONLY_ON_REQUEST]
        return preferred[0]
    return "torch"


def resolve_backend(op: str, backend: str | None, device: torch.device) -> str:
    """The backend to run ``op`` with: ``backend`` if given, else $UNET_FAST_BACKEND, else the
    device's default. Raises ValueError for an unknown name and RuntimeError for a backend
    that cannot run on ``device`` here."""
    source = "backend"
    if backend is None:
        backend, source = settings.current().backend, ENV_VAR
    if backend == "auto":
        return _default_backend(op, device)
    if backend not in BACKENDS:
        raise ValueError(
            f"{source} must be one of {', '.join(map(repr, BACKENDS + ('auto',)))}; got {backend!r}"
        )
    available = available_backends(op, device)
    if backend not in available:
        raise RuntimeError(
            f"{source}={backend!r} cannot run unet_fast::{op} on {device.type} tensors here; "
            f"available: {', '.join(available)}. ('cpu' needs the C++ extension, 'cuda' an "
            "extension built with UNET_FAST_CUDA=1, 'triton' CUDA tensors or "
            "TRITON_INTERPRET=1 for CPU tensors.)"
        )
    return backend
