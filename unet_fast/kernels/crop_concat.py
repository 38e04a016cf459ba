"""Triton kernels of crop_concat: strided copies between the concatenated tensor and its two
sources, walked in the memory order of the tensor written (unet_fast.kernels.walk) on a flat
grid."""

import triton
import triton.language as tl

from unet_fast.kernels import GPU_BLOCK, elementwise_block
from unet_fast.kernels.walk import aot_walks, channels_fastest, flat_indices, nchw_of, needs_int64


@triton.jit
def crop_concat_forward_kernel(
    up_ptr, skip_ptr, out_ptr,
    numel, up_channels, channels, h, w, top, left,
    up_sn, up_sc, up_sh, up_sw,
    skip_sn, skip_sc, skip_sh, skip_sw,
    out_sn, out_sc, out_sh, out_sw,
    BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr, INT64: tl.constexpr,
):
    i = flat_indices(BLOCK, INT64)
    mask = i < numel
    n, c, y, x = nchw_of(i, channels, h, w, CHANNELS_FASTEST)
    from_up = c < up_channels
    up = tl.load(up_ptr + n * up_sn + c * up_sc + y * up_sh + x * up_sw, mask=mask & from_up)
    skip_offset = n * skip_sn + (c - up_channels) * skip_sc + (y + top) * skip_sh + (x + left) * skip_sw
    skip = tl.load(skip_ptr + skip_offset, mask=mask & ~from_up)
    tl.store(out_ptr + n * out_sn + c * out_sc + y * out_sh + x * out_sw, tl.where(from_up, up, skip), mask=mask)


@triton.jit
def crop_concat_backward_kernel(
    grad_ptr, grad_skip_ptr,
    numel, up_channels, skip_channels, h, w, skip_h, skip_w, top, left,
    g_sn, g_sc, g_sh, g_sw,
    gs_sn, gs_sc, gs_sh, gs_sw,
    BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr, INT64: tl.constexpr,
):
    i = flat_indices(BLOCK, INT64)
    mask = i < numel
    n, c, sy, sx = nchw_of(i, skip_channels, skip_h, skip_w, CHANNELS_FASTEST)
    y = sy - top
    x = sx - left
    inside = mask & (y >= 0) & (y < h) & (x >= 0) & (x < w)
    value = tl.load(grad_ptr + n * g_sn + (c + up_channels) * g_sc + y * g_sh + x * g_sw, mask=inside, other=0.0)
    tl.store(grad_skip_ptr + n * gs_sn + c * gs_sc + sy * gs_sh + sx * gs_sw, value, mask=mask)


def crop_concat_forward(up, skip, out, top: int, left: int) -> None:
    """Fills ``out`` (N, Cu + Cs, h, w) with ``up`` and the (top, left) window of ``skip``."""
    numel = out.numel()
    if numel == 0:
        return
    block = elementwise_block(numel)
    crop_concat_forward_kernel[(triton.cdiv(numel, block),)](
        up, skip, out, numel, up.shape[1], *out.shape[1:], top, left,
        *up.stride(), *skip.stride(), *out.stride(),
        BLOCK=block, CHANNELS_FASTEST=channels_fastest(out), INT64=needs_int64(up, skip, out),
    )


def crop_concat_backward(grad_out, grad_skip, top: int, left: int) -> None:
    """Fills ``grad_skip`` with the skip channels of ``grad_out`` in the (top, left) window and
    zeros elsewhere."""
    numel = grad_skip.numel()
    if numel == 0:
        return
    skip_channels, skip_h, skip_w = grad_skip.shape[1:]
    block = elementwise_block(numel)
    crop_concat_backward_kernel[(triton.cdiv(numel, block),)](
        grad_out, grad_skip, numel, grad_out.shape[1] - skip_channels, skip_channels, *grad_out.shape[2:],
        skip_h, skip_w, top, left, *grad_out.stride(), *grad_skip.stride(),
        BLOCK=block, CHANNELS_FASTEST=channels_fastest(grad_skip), INT64=needs_int64(grad_out, grad_skip),
    )


def aot_configurations():
    """(kernel, signature, constexprs) of every configuration the launchers above use on a GPU,
    for ahead-of-time compilation (unet_fast.kernels.aot)."""
    for dtype in ("fp32", "bf16"):
        for kernel, pointers in ((crop_concat_forward_kernel, 3), (crop_concat_backward_kernel, 2)):
            for walk, index in aot_walks():
                constexprs = {"BLOCK": GPU_BLOCK, **walk}
                signature = {name: f"*{dtype}" if i < pointers else index for i, name in enumerate(kernel.arg_names)}
                yield kernel, {**signature, **dict.fromkeys(constexprs, "constexpr")}, constexprs
