"""Triton kernels of max_pool2x2: one program per block of output elements, walked in the
output's memory order (unet_fast.kernels.walk) on a flat grid, any strides. The backward finds
each window's first maximum again from the input and the saved output, as the C++ kernels do."""

import torch
import triton
import triton.language as tl

from unet_fast.kernels import GPU_BLOCK, elementwise_block
from unet_fast.kernels.walk import aot_walks, channels_fastest, flat_indices, nchw_of, needs_int64


@triton.jit
def _outputs(numel, C, OH, OW, BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr, INT64: tl.constexpr):
    """(n, c, oy, ox) of this program's output elements and the mask of those that exist."""
    i = flat_indices(BLOCK, INT64)
    n, c, oy, ox = nchw_of(i, C, OH, OW, CHANNELS_FASTEST)
    return n, c, oy, ox, i < numel


@triton.jit
def _window_values(x_ptr, n, c, oy, ox, mask, x_sn, x_sc, x_sh, x_sw, ACC: tl.constexpr):
    """The window's four values in the accumulation type (exact for every input dtype)."""
    top_left = x_ptr + n * x_sn + c * x_sc + 2 * oy * x_sh + 2 * ox * x_sw
    a = tl.load(top_left, mask=mask, other=0.0).to(ACC)
    b = tl.load(top_left + x_sw, mask=mask, other=0.0).to(ACC)
    c_ = tl.load(top_left + x_sh, mask=mask, other=0.0).to(ACC)
    d = tl.load(top_left + x_sh + x_sw, mask=mask, other=0.0).to(ACC)
    return a, b, c_, d


@triton.jit
def _max_keep_nan(a, b):
    return tl.where((b > a) | (b != b), b, a)


@triton.jit
def max_pool_forward_kernel(
    x_ptr, out_ptr, numel, C, OH, OW,
    x_sn, x_sc, x_sh, x_sw, o_sn, o_sc, o_sh, o_sw,
    ACC: tl.constexpr, BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr, INT64: tl.constexpr,
):
    n, c, oy, ox, mask = _outputs(numel, C, OH, OW, BLOCK, CHANNELS_FASTEST, INT64)
    a, b, c_, d = _window_values(x_ptr, n, c, oy, ox, mask, x_sn, x_sc, x_sh, x_sw, ACC)
    value = _max_keep_nan(_max_keep_nan(_max_keep_nan(a, b), c_), d)
    tl.store(out_ptr + n * o_sn + c * o_sc + oy * o_sh + ox * o_sw, value.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def max_pool_backward_kernel(
    grad_ptr, x_ptr, out_ptr, grad_x_ptr, numel, C, OH, OW,
    g_sn, g_sc, g_sh, g_sw, x_sn, x_sc, x_sh, x_sw, o_sn, o_sc, o_sh, o_sw, gx_sn, gx_sc, gx_sh, gx_sw,
    ACC: tl.constexpr, BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr, INT64: tl.constexpr,
):
    n, c, oy, ox, mask = _outputs(numel, C, OH, OW, BLOCK, CHANNELS_FASTEST, INT64)
    a, b, c_, d = _window_values(x_ptr, n, c, oy, ox, mask, x_sn, x_sc, x_sh, x_sw, ACC)
    out = tl.load(out_ptr + n * o_sn + c * o_sc + oy * o_sh + ox * o_sw, mask=mask, other=0.0).to(ACC)
    grad = tl.load(grad_ptr + n * g_sn + c * g_sc + oy * g_sh + ox * g_sw, mask=mask, other=0.0).to(ACC)
    # The first maximum (or NaN) of the window takes the gradient.
    take_a = (a == out) | (a != a)
    take_b = ~take_a & ((b == out) | (b != b))
    take_c = ~take_a & ~take_b & ((c_ == out) | (c_ != c_))
    take_d = ~take_a & ~take_b & ~take_c
    top_left = grad_x_ptr + n * gx_sn + c * gx_sc + 2 * oy * gx_sh + 2 * ox * gx_sw
    dtype = grad_x_ptr.dtype.element_ty
    tl.store(top_left, tl.where(take_a, grad, 0.0).to(dtype), mask=mask)
    tl.store(top_left + gx_sw, tl.where(take_b, grad, 0.0).to(dtype), mask=mask)
    tl.store(top_left + gx_sh, tl.where(take_c, grad, 0.0).to(dtype), mask=mask)
    tl.store(top_left + gx_sh + gx_sw, tl.where(take_d, grad, 0.0).to(dtype), mask=mask)


def _acc_dtype(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def max_pool_forward(x, out) -> None:
    """Fills out (N, C, H // 2, W // 2) with the maxima of x's 2x2 windows."""
    numel = out.numel()
    if numel == 0:
        return
    block = elementwise_block(numel)
    max_pool_forward_kernel[(triton.cdiv(numel, block),)](
        x, out, numel, *out.shape[1:], *x.stride(), *out.stride(), ACC=_acc_dtype(x), BLOCK=block,
        CHANNELS_FASTEST=channels_fastest(out), INT64=needs_int64(x, out),
    )


def max_pool_backward(grad_out, x, out, grad_x) -> None:
    """Writes every window of grad_x (a last odd row or column is left to the caller)."""
    numel = out.numel()
    if numel == 0:
        return
    block = elementwise_block(numel)
    max_pool_backward_kernel[(triton.cdiv(numel, block),)](
        grad_out, x, out, grad_x, numel, *out.shape[1:],
        *grad_out.stride(), *x.stride(), *out.stride(), *grad_x.stride(), ACC=_acc_dtype(x), BLOCK=block,
        CHANNELS_FASTEST=channels_fastest(out), INT64=needs_int64(grad_out, x, out, grad_x),
    )


def aot_configurations():
    """(kernel, signature, constexprs) of every configuration the launchers above use on a GPU,
    for ahead-of-time compilation (unet_fast.kernels.aot)."""
    for dtype in ("fp32", "bf16"):
        for kernel, pointers in ((max_pool_forward_kernel, 2), (max_pool_backward_kernel, 4)):
            for walk, index in aot_walks():
                constexprs = {"ACC": tl.float32, "BLOCK": GPU_BLOCK, **walk}
                signature = {name: f"*{dtype}" if i < pointers else index for i, name in enumerate(kernel.arg_names)}
                yield kernel, {**signature, **dict.fromkeys(constexprs, "constexpr")}, constexprs
