"""up_conv2x2: the decoder's 2x2 stride-2 transposed convolution (``nn.ConvTranspose2d(C_in,
C_out, 2, 2)``), which doubles the feature map's height and width.

Its 2x2 windows do not overlap, so on the CPU it is one GEMM over the input's pixels,
(pixels, C_in) x (C_in, 2*2*C_out), whose rows are scattered with the bias into the
channels_last output; the backward gathers the output's gradient into that layout once and
takes the input's and the weight's gradients as two more GEMMs. ATen's CPU transposed
convolution runs its backward several times slower than that. On CUDA tensors every backend
runs cuDNN's transposed convolution (the composite): it is a GEMM there already. Under
``torch.autocast`` the op runs in the autocast dtype, as ``F.conv_transpose2d`` does; on the
CPU it takes float32 weights and biases as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast import settings
from unet_fast.ops import backends
from unet_fast.ops._checks import check_parameter_like, check_tensor
from unet_fast.ops.conv import autocast_inputs, takes_master_parameters

__all__ = ["up_conv2x2"]


def up_conv2x2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2)`` for x (N, C_in, H, W), weight (C_in,
    C_out, 2, 2), bias (C_out,) or None; returns (N, C_out, 2H, 2W), channels_last."""
    chosen = _resolve(backend, x.device) if isinstance(x, torch.Tensor) else None
    master = takes_master_parameters(chosen, x)
    (x,), (weight, bias) = autocast_inputs((x,), (weight, bias), master)
    _check_args(x, weight, bias, master)
    if chosen == "torch":
        return F.conv_transpose2d(x, weight, bias, stride=2)
    return torch.ops.unet_fast.up_conv2x2(x, weight, bias)


@backends.constant_when_compiled
def _resolve(backend, device):
    """The GPU backends run the composite (see the module docstring)."""
    if (backend or settings.current().backend) in ("triton", "cuda"):
        return "torch"
    return backends.resolve_backend("up_conv2x2", backend, device)


def _check_args(x, weight, bias, master_parameters: bool = False) -> None:
    check_tensor("x", x, dim=4, layout="(N, C_in, H, W)")
    check_tensor("weight", weight, dim=4, layout="(C_in, C_out, 2, 2)")
    check_parameter_like("weight", weight, "x", x, master_parameters)
    if tuple(weight.shape[2:]) != (2, 2):
        raise ValueError(f"weight must be (C_in, C_out, 2, 2), got kernel size {tuple(weight.shape[2:])}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight takes {weight.shape[0]} input channels but x has {x.shape[1]}")
    if bias is not None:
        check_tensor("bias", bias, dim=1, layout="(C_out,)")
        check_parameter_like("bias", bias, "x", x, master_parameters)
        if bias.shape[0] != weight.shape[1]:
            raise ValueError(f"bias must have {weight.shape[1]} entries (C_out), got {bias.shape[0]}")


def _fake(x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[1], 2 * h, 2 * w)).contiguous(memory_format=torch.channels_last)


def _fake_backward(grad_out, x, weight, output_mask):
    grads = (torch.empty_like(x, memory_format=torch.channels_last),
             torch.empty_like(weight, memory_format=torch.channels_last), weight.new_empty(weight.shape[1]))
    return tuple(g if wanted else None for g, wanted in zip(grads, output_mask))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if torch.is_grad_enabled():  # backward(create_graph=True): ATen's, which can be differentiated again
        return torch.ops.aten.convolution_backward(grad_out, x, weight.to(x.dtype), [weight.shape[1]], [2, 2],
                                                   [0, 0], [1, 1], True, [0, 0], 1, mask)
    return torch.ops.unet_fast.up_conv2x2_backward(grad_out, x, weight, mask)


if backends.extension_loaded():
    torch.library.register_fake("unet_fast::up_conv2x2")(_fake)
    torch.library.register_fake("unet_fast::up_conv2x2_backward")(_fake_backward)
    torch.library.register_autograd("unet_fast::up_conv2x2", _backward, setup_context=_setup_context)
