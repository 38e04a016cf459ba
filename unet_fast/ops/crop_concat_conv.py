"""crop_concat_conv3x3: the first convolution of a U-Net decoder stage applied to the join of
the up-convolved map with the cropped skip, ``conv3x3_bias_relu(crop_concat(up, skip))``,
without keeping the concatenated tensor.

- triton: the convolution kernels read their input channels from ``up`` and from the window
  of ``skip`` directly, so the concatenated tensor never exists, forward or backward.
- cpu, cuda: the join is built for the vendor convolution and dropped at once; the backward
  never builds it: every gradient is taken per source, from ``up`` and from the window of
  ``skip`` (a view), with their channels of the weight (csrc/crop_concat_conv.h).
- torch: the composite of stock ops, the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from unet_fast import tuning
from unet_fast.ops import backends
from unet_fast.ops.conv import (
    autocast_inputs,
    check_filter,
    compiled_algorithm,
    composite_backward,
    conv3x3_bias_relu_composite,
    new_conv_output,
    takes_master_parameters,
    tuned,
    tuned_backward,
)
from unet_fast.ops.crop_concat import center_crop_offset, check_join_args, crop_concat_composite

__all__ = ["crop_concat_conv3x3"]


def crop_concat_conv3x3(
    up: torch.Tensor,
    skip: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = True,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``conv3x3_bias_relu(crop_concat(up, skip), weight, bias, relu)`` for up (N, Cu, h, w),
    skip (N, Cs, H, W) with H >= h, W >= w, weight (C_out, Cu + Cs, 3, 3)."""
    chosen = resolve_join_backend(backend, up.device) if isinstance(up, torch.Tensor) else None
    master = takes_master_parameters(chosen, up)
    (up, skip), (weight, bias) = autocast_inputs((up, skip), (weight, bias), master)
    check_join_args(up, skip)
    check_filter(weight, bias, relu, up, up.shape[1] + skip.shape[1], tuple(up.shape[2:]), input_name="up",
                 master_parameters=master)
    if chosen == "torch":
        return conv3x3_bias_relu_composite(crop_concat_composite(up, skip), weight, bias, relu)
    return join_forward_on(chosen, up, skip, weight, bias, relu)


def join_forward_on(backend: str, up, skip, weight, bias, relu):
    """The forward op of a kernel backend ("cpu", "cuda" or "triton")."""
    if backend == "triton":
        return torch.ops.unet_fast.crop_concat_conv3x3_triton(up, skip, weight, bias, relu)
    if backend == "cuda":
        return torch.ops.unet_fast.crop_concat_conv3x3(up, skip, weight, bias, relu)
    return tuned(torch.ops.unet_fast.crop_concat_conv3x3, _join_forward(up, skip, weight),
                 up, skip, weight, bias, relu)


def join_backward_on(backend: str, grad_out, up, skip, weight, out, output_mask):
    """The backward op of a kernel backend: the gradients of up, skip, weight and bias (each
    None unless asked for), through the ReLU whose output is `out` if it is given. Under
    ``backward(create_graph=True)`` the composite's, which can be differentiated again."""
    if torch.is_grad_enabled():
        return _composite_backward(grad_out, up, skip, weight, out, output_mask)
    if backend == "triton":
        return torch.ops.unet_fast.crop_concat_conv3x3_triton_backward(grad_out, up, skip, weight, out, output_mask)
    if backend == "cuda":
        return torch.ops.unet_fast.crop_concat_conv3x3_backward(grad_out, up, skip, weight, out, output_mask)
    return _tuned_backward(grad_out, up, skip, weight, out, output_mask)


def _composite_backward(grad_out, up, skip, weight, out, output_mask):
    """join_backward_on's gradients by stock differentiable ops, through the join."""
    want_up, want_skip, want_weight, want_bias = output_mask
    grad_joined, grad_weight, grad_bias = composite_backward(
        grad_out, crop_concat_composite(up, skip), weight, out, [want_up or want_skip, want_weight, want_bias])
    grad_up = grad_joined[:, : up.shape[1]] if want_up else None
    grad_skip = None
    if want_skip:
        (top, left), (h, w), (height, width) = _window(up, skip), up.shape[2:], skip.shape[2:]
        grad_skip = F.pad(grad_joined[:, up.shape[1]:], (left, width - left - w, top, height - top - h))
    return grad_up, grad_skip, grad_weight, grad_bias


def _join_forward(up, skip, weight) -> tuning.ConvShape:
    """The forward of the convolution of the join (up's size, the channels of both)."""
    n, c_up, h, w = up.shape
    return tuning.ConvShape("forward", str(up.dtype).removeprefix("torch."), int(n), int(c_up + skip.shape[1]),
                            int(weight.shape[0]), int(h) - 2, int(w) - 2)


def _tuned_backward(grad_out, up, skip, weight, out, output_mask):
    """The CPU backward, each of its four convolution passes by its tuned algorithm: the data
    and weight gradients of the up part (C_out <-> Cu) and of the skip window's (C_out <-> Cs).
    While any is being measured, the parts run through the convolution's own tuned backward,
    as the C++ op does them, so that each pass is timed alone."""
    op = torch.ops.unet_fast.crop_concat_conv3x3_backward
    up_channels = up.shape[1]
    window = _window(up, skip, crop=True)
    parts = [(up, weight[:, :up_channels]), (window, weight[:, up_channels:])]
    shapes = [tuning.ConvShape.of(kind, source, part) for kind in ("data_grad", "weight_grad") for source, part in parts]
    if torch.compiler.is_compiling():
        return op(grad_out, up, skip, weight, out, output_mask,
                  *(compiled_algorithm(*vars(shape).values()) for shape in shapes))
    can_measure = not is_fake(grad_out)
    if not any(tuning.exploring(shape, can_measure) for shape in shapes):
        return op(grad_out, up, skip, weight, out, output_mask, *tuning.settled_algorithms(shapes))
    grad = torch.where(out <= 0, 0, grad_out) if out is not None else grad_out
    want_up, want_skip, want_weight, want_bias = output_mask
    (_, up_weight), (_, skip_weight) = parts
    # skip's part first, as the C++ op does: its window's gradient goes before up's is made
    grad_window, skip_grad_weight, _ = tuned_backward(grad, window, skip_weight, None, [want_skip, want_weight, False])
    grad_skip = None
    if want_skip:
        grad_skip = (grad_window if skip.shape == window.shape
                     else torch.ops.unet_fast.crop_concat_backward(grad_window, 0, skip.shape[2], skip.shape[3]))
    del grad_window
    grad_up, up_grad_weight, grad_bias = tuned_backward(grad, up, up_weight, None, [want_up, want_weight, want_bias])
    grad_weight = None
    if want_weight:
        grad_weight = torch.empty_like(weight)
        grad_weight[:, :up_channels] = up_grad_weight
        grad_weight[:, up_channels:] = skip_grad_weight
    return grad_up, grad_skip, grad_weight, grad_bias


@backends.constant_when_compiled
def resolve_join_backend(backend, device):
    return backends.resolve_backend("crop_concat_conv3x3", backend, device)


def _fake(up, skip, weight, bias, relu, algorithm="direct"):
    return new_conv_output(up, weight)


def _fake_backward(grad_out, up, skip, weight, out, output_mask, *algorithms):
    channels_last = dict(memory_format=torch.channels_last)
    grads = (torch.empty_like(up, **channels_last), torch.empty_like(skip, **channels_last),
             torch.empty_like(weight), weight.new_empty(weight.shape[0]))
    return tuple(g if wanted else None for g, wanted in zip(grads, output_mask))


def _setup_context(ctx, inputs, output):
    up, skip, weight, bias, relu = inputs[:5]
    ctx.save_for_backward(up, skip, weight, output if relu else None)
    ctx.has_bias = bias is not None


def _register(forward_op, backward_op) -> None:
    """Fake impls and autograd for one backend's pair of ops."""

    def backward(ctx, grad_out):
        up, skip, weight, out = ctx.saved_tensors
        mask = [*ctx.needs_input_grad[:3], ctx.has_bias and ctx.needs_input_grad[3]]
        return (*join_backward_on("triton", grad_out, up, skip, weight, out, mask), None)

    torch.library.register_fake(forward_op)(_fake)
    torch.library.register_fake(backward_op)(_fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)


_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor up, Tensor skip, Tensor weight, Tensor? out, bool[4] output_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor)"  # a gradient not asked for is None
)


@torch.library.custom_op("unet_fast::crop_concat_conv3x3_triton", mutates_args=())
def _crop_concat_conv3x3_triton(
    up: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool
) -> torch.Tensor:
    from unet_fast.kernels import conv3x3 as kernels

    up, skip = (t.contiguous(memory_format=torch.channels_last) for t in (up, skip))
    out = new_conv_output(up, weight)
    kernels.conv3x3_forward(up, skip, weight, bias, out, relu, *_window(up, skip))
    return out


@torch.library.custom_op("unet_fast::crop_concat_conv3x3_triton_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _crop_concat_conv3x3_triton_backward(grad_out, up, skip, weight, out, output_mask):
    from unet_fast.kernels import conv3x3 as kernels

    grad_out, up, skip = (t.contiguous(memory_format=torch.channels_last) for t in (grad_out, up, skip))
    if out is not None:
        out = out.contiguous(memory_format=torch.channels_last)
    top, left = _window(up, skip)
    grad_up = grad_skip = grad_weight = grad_bias = None
    if output_mask[0] or output_mask[1]:
        grad_up = torch.empty_like(up)
        grad_skip = torch.zeros_like(skip)  # zero outside the window
        kernels.conv3x3_input_grad(grad_out, out, weight, grad_up, grad_skip, top, left)
    if output_mask[2] or output_mask[3]:
        grad_weight, grad_bias = kernels.weight_and_bias_grad(grad_out, out, up, skip, weight, output_mask[3], top, left)
    return (grad_up if output_mask[0] else None, grad_skip if output_mask[1] else None,
            grad_weight if output_mask[2] else None, grad_bias)


def _window(up, skip, crop=False):
    """(top, left) of the centre window of skip that up's size takes; the window itself if `crop`."""
    top, left = center_crop_offset(skip.shape[2], up.shape[2]), center_crop_offset(skip.shape[3], up.shape[3])
    if crop:
        return skip[:, :, top : top + up.shape[2], left : left + up.shape[3]]
    return top, left


_register(_crop_concat_conv3x3_triton, _crop_concat_conv3x3_triton_backward)
if backends.extension_loaded():
    # one op for the CPU and CUDA kernels: the CPU's backward by tuned algorithms, CUDA's by cuDNN's
    _forward = torch.ops.unet_fast.crop_concat_conv3x3.default
    _backward = torch.ops.unet_fast.crop_concat_conv3x3_backward.default
    torch.library.register_fake(_forward)(_fake)
    torch.library.register_fake(_backward)(_fake_backward)

    def _extension_backward(ctx, grad_out):
        up, skip, weight, out = ctx.saved_tensors
        mask = [*ctx.needs_input_grad[:3], ctx.has_bias and ctx.needs_input_grad[3]]
        return (*join_backward_on(grad_out.device.type, grad_out, up, skip, weight, out, mask), None, None)

    torch.library.register_autograd(_forward, _extension_backward, setup_context=_setup_context)
