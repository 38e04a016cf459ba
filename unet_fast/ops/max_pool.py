"""max_pool2x2: the U-Net's 2x2, stride-2 max-pool, keeping no indices.

``F.max_pool2d`` keeps an int64 index per output for its backward (75 MiB over a 572x572
U-Net's encoder, twice the pooled maps themselves). The backward here finds each window's
first maximum again from the input and the output, which the network keeps anyway (the input
is the skip connection, the output the next block's input). The gradient goes where
``F.max_pool2d``'s does, except among several NaNs in one window (here: the first).

``max_pool2x2_and_crop`` also returns the centre window of x that a decoder stage joins, as a
view, in one autograd node: the window's gradient is kept at its own size until the pool's
arrives and both go into x's gradient in one tensor. As two consumers of x, the decoder's
gradient of x (zero around the window: 80 MiB at the top stage of a 572x572 U-Net, 39 of them
the window) would wait whole through the encoder's backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast.ops import backends
from unet_fast.ops._checks import check_tensor, memory_format_of
from unet_fast.ops.crop_concat import center_crop_offset

__all__ = ["max_pool2x2", "max_pool2x2_and_crop"]


def max_pool2x2(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for x (N, C, H, W), H, W >= 2: (N, C, H // 2, W // 2)."""
    check_tensor("x", x, dim=4, layout="(N, C, H, W)")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must be at least 2x2 to pool, got {tuple(x.shape[2:])}")
    chosen = _resolve(backend, x.device)
    if chosen == "torch":
        return F.max_pool2d(x, 2)
    if chosen == "triton":
        return torch.ops.unet_fast.max_pool2x2_triton(x)
    return torch.ops.unet_fast.max_pool2x2(x)


def max_pool2x2_and_crop(x: torch.Tensor, size: tuple[int, int], *,
                         backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max_pool2x2(x), x[:, :, top:top + h, left:left + w])`` for ``size = (h, w)``: the
    pooled map and the centre window of x (a view; ``crop_concat``'s window), whose gradient
    is held at the window's size, not x's, until the pool's gradient arrives."""
    check_tensor("x", x, dim=4, layout="(N, C, H, W)")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must be at least 2x2 to pool, got {tuple(x.shape[2:])}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in size)):
        raise TypeError(f"size must be a pair of ints (height, width), got {size!r}")
    if not (0 < size[0] <= x.shape[2] and 0 < size[1] <= x.shape[3]):
        raise ValueError(f"size must be positive and at most x's {tuple(x.shape[2:])}, got {tuple(size)}")
    return _PoolAndCrop.apply(x, tuple(size), _resolve(backend, x.device))


class _PoolAndCrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, backend):
        pooled = max_pool2x2(x, backend=backend)
        top, left = center_crop_offset(x.shape[2], size[0]), center_crop_offset(x.shape[3], size[1])
        ctx.save_for_backward(x, pooled)
        ctx.box, ctx.backend = (top, left, *size), backend
        ctx.set_materialize_grads(False)
        return pooled, x[:, :, top : top + size[0], left : left + size[1]]

    @staticmethod
    def backward(ctx, grad_pooled, grad_window):
        x, pooled = ctx.saved_tensors
        top, left, height, width = ctx.box
        if torch.is_grad_enabled():  # backward(create_graph=True): differentiable ops only
            grad = 0 if grad_pooled is None else _composite_backward(grad_pooled, x)
            if grad_window is not None:
                grad = grad + F.pad(grad_window, (left, x.shape[3] - left - width, top, x.shape[2] - top - height))
            return grad, None, None
        if grad_pooled is None:
            grad = torch.zeros_like(x, memory_format=memory_format_of(x))
        else:
            grad = _backward_on(ctx.backend, grad_pooled, x, pooled)
        if grad_window is not None:
            grad[:, :, top : top + height, left : left + width] += grad_window
        return grad, None, None


def _backward_on(backend, grad_out, x, out):
    """The input's gradient by the backend's backward op (a new tensor)."""
    if backend == "torch":
        return _composite_backward(grad_out, x)
    if backend == "triton":
        return torch.ops.unet_fast.max_pool2x2_triton_backward(grad_out, x, out)
    return torch.ops.unet_fast.max_pool2x2_backward(grad_out, x, out)


def _composite_backward(grad_out, x):
    """ATen's backward of F.max_pool2d, which can be differentiated again."""
    _, indices = F.max_pool2d(x.detach(), 2, return_indices=True)
    return torch.ops.aten.max_pool2d_with_indices_backward(grad_out, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                           indices)


@backends.constant_when_compiled
def _resolve(backend, device):
    return backends.resolve_backend("max_pool2x2", backend, device)


def _new_output(x):
    n, c, h, w = x.shape
    return torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def _new_input_grad(grad_out, x, out):
    """The input's gradient, zero in a last odd row or column (no window covers it)."""
    grad = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if x.shape[2] % 2:
        grad[:, :, -1].zero_()
    if x.shape[3] % 2:
        grad[:, :, :, -1].zero_()
    return grad


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _register(forward_op, backward_op) -> None:
    def backward(ctx, grad_out):
        x, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): one that can be differentiated again
            return _composite_backward(grad_out, x)
        return backward_op(grad_out, x, out)

    torch.library.register_fake(forward_op)(_new_output)
    torch.library.register_fake(backward_op)(_new_input_grad)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)


@torch.library.custom_op("unet_fast::max_pool2x2_triton", mutates_args=())
def _max_pool2x2_triton(x: torch.Tensor) -> torch.Tensor:
    from unet_fast.kernels import max_pool as kernels

    out = _new_output(x)
    kernels.max_pool_forward(x, out)
    return out


@torch.library.custom_op("unet_fast::max_pool2x2_triton_backward", mutates_args=())
def _max_pool2x2_triton_backward(grad_out: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    from unet_fast.kernels import max_pool as kernels

    grad_x = _new_input_grad(grad_out, x, out)
    kernels.max_pool_backward(grad_out, x, out, grad_x)
    return grad_x


_register(_max_pool2x2_triton, _max_pool2x2_triton_backward)
if backends.extension_loaded():
    _register(torch.ops.unet_fast.max_pool2x2.default, torch.ops.unet_fast.max_pool2x2_backward.default)
