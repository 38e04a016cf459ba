"""The fused ops. Each takes ``backend=`` (see :mod:`unet_fast.ops.backends`)."""

from unet_fast.ops.backends import available_backends
from unet_fast.ops.crop_concat import crop_concat

__all__ = ["available_backends", "crop_concat"]
