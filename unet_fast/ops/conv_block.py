"""conv3x3_block: a U-Net encoder block, conv3x3+bias+ReLU then conv3x3+bias(+ReLU), that keeps
only its input and output for backward and computes the first convolution's output again there.

The first convolution's output is the largest tensor a block keeps (64x570x570 floats, 83 MB,
in the first block at 572). Its input and output are kept anyway (the input is the pooled map,
kept by the pool; the output is the skip connection). Recomputing it took a 572x572 training
step's peak from 742 to 599 MiB for about 0.2 s (8%) more time. In the backward the second
convolution applies the first one's ReLU mask to the gradient it returns, so neither the
recomputed output nor a masked copy of the gradient is alive during the first one's backward.

Recomputing costs 9 C_in multiply-adds per value of that output, so the wide blocks' is kept
(``KEEP_FROM_CHANNELS``): at 572 those of the three deepest blocks (128, 256 and 512 channels
in; 19, 9 and 3.5 MiB), whose recomputation took 2.8% of a training step (1.028x, alternating
in one process on a 2-core AVX2 EPYC), for 30 MiB more peak RSS (a fresh 3-step process 1123 ->
1153 MiB). The next block's (64 channels in) would add 40 MiB more.
"""

from __future__ import annotations

import torch

from unet_fast.ops.conv import (
    autocast_inputs,
    backward_on,
    check_conv_args,
    check_filter,
    conv3x3_bias_relu_composite,
    forward_on,
    resolve_conv_backend,
    takes_master_parameters,
)

__all__ = ["conv3x3_block"]


def conv3x3_block(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    final_relu: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``conv3x3_bias_relu(conv3x3_bias_relu(x, weight1, bias1), weight2, bias2, final_relu)``,
    recomputing the inner output in backward instead of keeping it. Runs on the backend
    conv3x3_bias_relu would choose."""
    chosen = resolve_conv_backend(backend, x.device) if isinstance(x, torch.Tensor) else None
    master = takes_master_parameters(chosen, x)
    (x,), (weight1, bias1, weight2, bias2) = autocast_inputs((x,), (weight1, bias1, weight2, bias2), master)
    check_conv_args(x, weight1, bias1, True, master)
    inner_size = (x.shape[2] - 2, x.shape[3] - 2)
    check_filter(weight2, bias2, final_relu, x, weight1.shape[0], inner_size,
                 input_name="the first convolution's output", master_parameters=master)
    if chosen == "torch":
        inner = conv3x3_bias_relu_composite(x, weight1, bias1, True)
        return conv3x3_bias_relu_composite(inner, weight2, bias2, final_relu)
    return _RecomputedBlock.apply(x, weight1, bias1, weight2, bias2, final_relu, chosen)


# Input channels from which a block keeps its first convolution's output for backward.
KEEP_FROM_CHANNELS = 128


class _RecomputedBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, final_relu, backend):
        inner = forward_on(backend, x, weight1, bias1, True)
        out = forward_on(backend, inner, weight2, bias2, final_relu)
        kept = (inner,) if x.shape[1] >= KEEP_FROM_CHANNELS else ()
        ctx.save_for_backward(x, weight1, bias1, weight2, bias2, out, *kept)
        ctx.final_relu, ctx.backend = final_relu, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight1, bias1, weight2, bias2, out, *kept = ctx.saved_tensors
        needs = ctx.needs_input_grad
        inner = kept[0] if kept else forward_on(ctx.backend, x, weight1, bias1, True)
        # inner's gradient comes out of the second convolution's backward already through the
        # first one's ReLU (inner is that ReLU's output), so inner can go before the first
        # convolution's backward: two fewer tensors of its size at the step's peak.
        grad_inner, grad_weight2, grad_bias2 = backward_on(
            ctx.backend, grad_out, inner, weight2, out if ctx.final_relu else None,
            [True, needs[3], bias2 is not None and needs[4]], relu_input=True
        )
        del inner
        grad_x, grad_weight1, grad_bias1 = backward_on(
            ctx.backend, grad_inner, x, weight1, None, [needs[0], needs[1], bias1 is not None and needs[2]]
        )
        return grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2, None, None
