"""crop_concat: ``cat([up, centre_crop(skip)], dim=1)`` in one pass, the join of a U-Net
decoder stage with its encoder skip. The crop rounds as torchvision's CenterCrop does."""

from __future__ import annotations

import torch

from unet_fast.ops import backends
from unet_fast.ops._checks import check_same_device_and_dtype, check_tensor, memory_format_of

__all__ = ["crop_concat", "center_crop_offset"]


def center_crop_offset(outer, inner):
    """Start of a centred window of length ``inner`` in ``outer``: int(round((outer - inner) / 2))
    with Python's half-to-even rounding, as torchvision's CenterCrop. Integer-only, so it
    also works on symbolic sizes."""
    diff = outer - inner
    half = diff // 2
    return half if diff % 2 == 0 or half % 2 == 0 else half + 1


def crop_concat(up: torch.Tensor, skip: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Concatenates ``up`` (N, Cu, h, w) with the centre (h, w) window of ``skip``
    (N, Cs, H, W) along channels, giving (N, Cu + Cs, h, w), in one pass over the bytes.

    ``backend`` forces a kernel (see :mod:`unet_fast.ops.backends`); the gradient of ``skip``
    is zero outside the window."""
    check_join_args(up, skip)
    chosen = _resolve(backend, up.device)
    if chosen == "torch":
        return crop_concat_composite(up, skip)
    if chosen == "triton":
        return torch.ops.unet_fast.crop_concat_triton(up, skip)
    return torch.ops.unet_fast.crop_concat(up, skip)


def check_join_args(up, skip) -> None:
    check_tensor("up", up, dim=4, layout="(N, C, H, W)")
    check_tensor("skip", skip, dim=4, layout="(N, C, H, W)")
    check_same_device_and_dtype(up=up, skip=skip)
    if up.shape[0] != skip.shape[0]:
        raise ValueError(f"up and skip must have the same batch size, got {up.shape[0]} and {skip.shape[0]}")
    if skip.shape[2] < up.shape[2] or skip.shape[3] < up.shape[3]:
        raise ValueError(
            f"skip's spatial size {tuple(skip.shape[2:])} must be at least up's {tuple(up.shape[2:])}"
        )


@backends.constant_when_compiled
def _resolve(backend, device):
    return backends.resolve_backend("crop_concat", backend, device)


def crop_concat_composite(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """The stock-PyTorch form: a cropped view and torch.cat."""
    h, w = up.shape[2:]
    top = center_crop_offset(skip.shape[2], h)
    left = center_crop_offset(skip.shape[3], w)
    return torch.cat([up, skip[:, :, top : top + h, left : left + w]], dim=1)


def _empty(tensor: torch.Tensor, shape) -> torch.Tensor:
    return torch.empty(shape, dtype=tensor.dtype, device=tensor.device, memory_format=memory_format_of(tensor))


def _new_output(up, skip):
    """The uninitialised output; also the fake (meta) implementation."""
    return _empty(up, (up.shape[0], up.shape[1] + skip.shape[1], *up.shape[2:]))


def _new_grad_skip(grad_out, up_channels, skip_height, skip_width):
    """The uninitialised gradient of skip; also the backward op's fake implementation."""
    n, channels = grad_out.shape[:2]
    return _empty(grad_out, (n, channels - up_channels, skip_height, skip_width))


def _setup_forward(ctx, inputs, output):
    up, skip = inputs
    ctx.up_channels = up.shape[1]
    ctx.skip_size = tuple(skip.shape[2:])


def _setup_backward(ctx, inputs, output):
    grad_out, ctx.up_channels = inputs[:2]
    ctx.up_shape = (grad_out.shape[0], ctx.up_channels, *grad_out.shape[2:])


def _register(forward_op, backward_op) -> None:
    """Fake impls and autograd for one backend's pair of ops. up's gradient is a view of the
    incoming gradient (a custom op could only copy it); the backward op's own gradient is
    crop_concat again (the op is linear), so double backward works too."""

    def backward(ctx, grad_out):
        grad_up = grad_out.narrow(1, 0, ctx.up_channels)
        return grad_up, backward_op(grad_out, ctx.up_channels, *ctx.skip_size)

    def double_backward(ctx, grad_grad_skip):
        zeros = grad_grad_skip.new_zeros(ctx.up_shape)
        return forward_op(zeros, grad_grad_skip), None, None, None

    torch.library.register_fake(forward_op)(_new_output)
    torch.library.register_fake(backward_op)(_new_grad_skip)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_forward)
    torch.library.register_autograd(backward_op, double_backward, setup_context=_setup_backward)


@torch.library.custom_op("unet_fast::crop_concat_triton", mutates_args=())
def _crop_concat_triton(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    from unet_fast.kernels import crop_concat as kernels

    out = _new_output(up, skip)
    h, w = up.shape[2:]
    kernels.crop_concat_forward(
        up, skip, out, center_crop_offset(skip.shape[2], h), center_crop_offset(skip.shape[3], w)
    )
    return out


@torch.library.custom_op("unet_fast::crop_concat_triton_backward", mutates_args=())
def _crop_concat_triton_backward(
    grad_out: torch.Tensor, up_channels: int, skip_height: int, skip_width: int
) -> torch.Tensor:
    from unet_fast.kernels import crop_concat as kernels

    grad_skip = _new_grad_skip(grad_out, up_channels, skip_height, skip_width)
    h, w = grad_out.shape[2:]
    kernels.crop_concat_backward(
        grad_out, grad_skip, center_crop_offset(skip_height, h), center_crop_offset(skip_width, w)
    )
    return grad_skip


_register(_crop_concat_triton, _crop_concat_triton_backward)
if backends.extension_loaded():
    _register(torch.ops.unet_fast.crop_concat.default, torch.ops.unet_fast.crop_concat_backward.default)
