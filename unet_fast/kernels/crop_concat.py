"""Triton kernels of crop_concat: strided copies between the concatenated tensor and its two
sources, one flat 1-D grid of (plane, block) programs so no grid dimension overflows."""

import triton
import triton.language as tl

from unet_fast.kernels import GPU_BLOCK, elementwise_block

@triton.jit
def _plane_block(channels, width, plane_size, blocks_per_plane, BLOCK: tl.constexpr):
    """This program's image n, channel c and block of pixels (y, x) of one plane, with the mask
    of those inside the plane."""
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // blocks_per_plane
    offs = (pid % blocks_per_plane) * BLOCK + tl.arange(0, BLOCK)
    return plane // channels, plane % channels, offs // width, offs % width, offs < plane_size


@triton.jit
def crop_concat_forward_kernel(
    up_ptr, skip_ptr, out_ptr,
    up_channels, channels, h, w, top, left, blocks_per_plane,
    up_sn, up_sc, up_sh, up_sw,
    skip_sn, skip_sc, skip_sh, skip_sw,
    out_sn, out_sc, out_sh, out_sw,
    BLOCK: tl.constexpr,
):
    n, c, y, x, mask = _plane_block(channels, w, h * w, blocks_per_plane, BLOCK)
    if c < up_channels:
        src = up_ptr + n * up_sn + c * up_sc + y * up_sh + x * up_sw
    else:
        src = skip_ptr + n * skip_sn + (c - up_channels) * skip_sc + (y + top) * skip_sh + (x + left) * skip_sw
    value = tl.load(src, mask=mask)
    tl.store(out_ptr + n * out_sn + c * out_sc + y * out_sh + x * out_sw, value, mask=mask)


@triton.jit
def crop_concat_backward_kernel(
    grad_ptr, grad_skip_ptr,
    up_channels, skip_channels, h, w, skip_h, skip_w, top, left, blocks_per_plane,
    g_sn, g_sc, g_sh, g_sw,
    gs_sn, gs_sc, gs_sh, gs_sw,
    BLOCK: tl.constexpr,
):
    n, c, sy, sx, mask = _plane_block(skip_channels, skip_w, skip_h * skip_w, blocks_per_plane, BLOCK)
    y = sy - top
    x = sx - left
    inside = mask & (y >= 0) & (y < h) & (x >= 0) & (x < w)
    src = grad_ptr + n * g_sn + (c + up_channels) * g_sc + y * g_sh + x * g_sw
    value = tl.load(src, mask=inside, other=0.0)
    tl.store(grad_skip_ptr + n * gs_sn + c * gs_sc + sy * gs_sh + sx * gs_sw, value, mask=mask)


def crop_concat_forward(up, skip, out, top: int, left: int) -> None:
    """Fills ``out`` (N, Cu + Cs, h, w) with ``up`` and the (top, left) window of ``skip``."""
    n, channels, h, w = out.shape
    block = elementwise_block(h * w)
    blocks_per_plane = triton.cdiv(h * w, block)
    grid = (n * channels * blocks_per_plane,)
    if grid[0] == 0:
        return
    crop_concat_forward_kernel[grid](
        up, skip, out, up.shape[1], channels, h, w, top, left, blocks_per_plane,
        *up.stride(), *skip.stride(), *out.stride(), BLOCK=block,
    )


def crop_concat_backward(grad_out, grad_skip, top: int, left: int) -> None:
    """Fills ``grad_skip`` with the skip channels of ``grad_out`` in the (top, left) window and
    zeros elsewhere."""
    n, skip_channels, skip_h, skip_w = grad_skip.shape
    h, w = grad_out.shape[2:]
    block = elementwise_block(skip_h * skip_w)
    blocks_per_plane = triton.cdiv(skip_h * skip_w, block)
    grid = (n * skip_channels * blocks_per_plane,)
    if grid[0] == 0:
        return
    crop_concat_backward_kernel[grid](
        grad_out, grad_skip, grad_out.shape[1] - skip_channels, skip_channels, h, w, skip_h, skip_w,
        top, left, blocks_per_plane, *grad_out.stride(), *grad_skip.stride(), BLOCK=block,
    )


def aot_configurations():
    """(kernel, signature, constexprs) of every configuration the launchers above use on a GPU,
    for ahead-of-time compilation (unet_fast.kernels.aot)."""
    for dtype in ("fp32", "bf16"):
        for kernel, pointers in ((crop_concat_forward_kernel, 3), (crop_concat_backward_kernel, 2)):
            names = kernel.arg_names
            signature = {name: f"*{dtype}" if i < pointers else "i64" for i, name in enumerate(names)}
            signature["BLOCK"] = "constexpr"
            yield kernel, signature, {"BLOCK": GPU_BLOCK}
