"""crop_concat_conv3x3_block: a U-Net decoder block, the convolution of the join of ``up`` with
the centre crop of ``skip`` (with its ReLU), then a second 3x3 convolution.

Two autograd nodes that move the ReLU's backward from the first to the second: the second
convolution returns its input's gradient already through the ReLU (its input is that ReLU's
output, so the mask is ``inner > 0``), and the join's backward takes it as it comes. So the
join keeps neither its output nor a masked copy of the gradient, and its output goes as soon
as the second convolution's backward has run: at the top stage of a 572x572 step that is two
64x390x390 tensors (37 MiB each) fewer at the step's peak. Gradients of the block's inputs are
exactly those of the two ops; the gradient between the two nodes is the masked one.
"""

from __future__ import annotations

import torch

from unet_fast.ops.conv import (
    autocast_inputs,
    backward_on,
    check_filter,
    conv3x3_bias_relu_composite,
    forward_on,
    takes_master_parameters,
)
from unet_fast.ops.crop_concat import check_join_args, crop_concat_composite
from unet_fast.ops.crop_concat_conv import join_backward_on, join_forward_on, resolve_join_backend

__all__ = ["crop_concat_conv3x3_block"]


def crop_concat_conv3x3_block(
    up: torch.Tensor,
    skip: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    final_relu: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``conv3x3_bias_relu(crop_concat_conv3x3(up, skip, weight1, bias1), weight2, bias2,
    final_relu)``. Runs on the backend crop_concat_conv3x3 would choose."""
    chosen = resolve_join_backend(backend, up.device) if isinstance(up, torch.Tensor) else None
    master = takes_master_parameters(chosen, up)
    (up, skip), (weight1, bias1, weight2, bias2) = autocast_inputs((up, skip), (weight1, bias1, weight2, bias2),
                                                                   master)
    check_join_args(up, skip)
    check_filter(weight1, bias1, True, up, up.shape[1] + skip.shape[1], tuple(up.shape[2:]), input_name="up",
                 master_parameters=master)
    inner_size = (up.shape[2] - 2, up.shape[3] - 2)
    check_filter(weight2, bias2, final_relu, up, weight1.shape[0], inner_size,
                 input_name="the join's convolution output", master_parameters=master)
    if chosen == "torch":
        inner = conv3x3_bias_relu_composite(crop_concat_composite(up, skip), weight1, bias1, True)
        return conv3x3_bias_relu_composite(inner, weight2, bias2, final_relu)
    inner = _JoinLeavingReluBackward.apply(up, skip, weight1, bias1, chosen)
    return _ConvOfReluOutput.apply(inner, weight2, bias2, final_relu, chosen)


class _JoinLeavingReluBackward(torch.autograd.Function):
    """The join's convolution and ReLU; its backward expects the gradient already masked."""

    @staticmethod
    def forward(ctx, up, skip, weight, bias, backend):
        ctx.save_for_backward(up, skip, weight)
        ctx.has_bias, ctx.backend = bias is not None, backend
        return join_forward_on(backend, up, skip, weight, bias, True)

    @staticmethod
    def backward(ctx, grad_inner):
        up, skip, weight = ctx.saved_tensors
        mask = [*ctx.needs_input_grad[:3], ctx.has_bias and ctx.needs_input_grad[3]]
        return (*join_backward_on(ctx.backend, grad_inner, up, skip, weight, None, mask), None)


class _ConvOfReluOutput(torch.autograd.Function):
    """A convolution whose input is a ReLU's output; its backward masks the input's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu, backend):
        out = forward_on(backend, x, weight, bias, relu)
        ctx.save_for_backward(x, weight, out if relu else None)
        ctx.has_bias, ctx.backend = bias is not None, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = backward_on(ctx.backend, grad_out, x, weight, out, [needs[0], needs[1], ctx.has_bias and needs[2]],
                            relu_input=True)
        return (*grads, None, None)
