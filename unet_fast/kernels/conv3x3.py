"""Triton kernels of conv3x3_bias_relu: implicit GEMMs over the nine taps of a valid 3x3
convolution, stride 1, for any strides of the tensors (NCHW or channels_last).

Every kernel reads its input channels from two sources, ``x1`` (channels [0, C1)) and a
window of ``x2`` at (top, left) (channels [C1, C_in)): the decoder's concatenation of the
up-convolved map with the cropped skip, without the concatenated tensor. A plain convolution
passes the same tensor twice with C1 = C_in.

- forward: pixels x output channels, K = C_in per tap; bias and ReLU in the epilogue.
- data gradient: input pixels x input channels, K = C_out per tap (the full convolution with
  the flipped kernel), masked on load by the saved output's ReLU mask; the two sources'
  gradients are written to their own tensors.
- weight gradient: output channels x input channels per tap, K = pixels, split over a third
  grid axis and added atomically in fp32; the programs of the first tap and channel tile also
  sum the masked gradient for the bias.

Accumulation is fp32 (fp64 for fp64 tensors, interpreter only). On a GPU, fp32 dots run in
TF32 when ``torch.backends.cudnn.allow_tf32`` lets cuDNN's convolutions do so (PyTorch's
default), else in full fp32; under the interpreter, where bf16 dots are wrong, operands are
upcast first.
"""

import warnings

import torch
import triton
import triton.language as tl

from unet_fast.kernels import INTERPRETED

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) a GPU autotunes among, per
# layer shape and dtype; each compiles for sm_80 and sm_90 without spills (unet_fast.kernels.aot).
# The kernels' index math is register-hungry: 128-wide tiles, or 4 warps, spill. Dots on CUDA
# cores (fp32 without TF32) hold their operand tiles in registers, so they take BLOCK_K = 16,
# and may use every register a thread can have: left to its heuristics, the ptxas of Triton 3.9
# held the data gradient to 128 and spilled 8-24 bytes (Triton 3.7's did not); with the cap at
# 255 neither spills (223-248 registers), at one 8-warp program per SM, as most of these
# kernels already ran.
_TENSOR_CORE_TILES = [(64, 64, 32, 8, 3), (64, 64, 32, 8, 2), (64, 64, 16, 8, 3)]
_CUDA_CORE_TILES = [(64, 64, 16, 8, 3), (64, 64, 16, 8, 2), (32, 64, 16, 4, 2)]
_CUDA_CORE_MAX_REGISTERS = 255
GPU_CONFIGS = {  # keyed by "the dots run on tensor cores"
    on_tensor_cores: [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages,
                      maxnreg=None if on_tensor_cores else _CUDA_CORE_MAX_REGISTERS)
        for m, n, k, warps, stages in tiles
    ]
    for on_tensor_cores, tiles in ((True, _TENSOR_CORE_TILES), (False, _CUDA_CORE_TILES))
}
# The interpreter pays per program and per K-step, so there one program covers as much as the
# shapes allow, up to these tiles.
_INTERPRETER_MAX = (1024, 128, 64)
_GPU_SPLIT_PIXELS = 16384  # weight-gradient pixels per program on a GPU


@triton.jit
def _load_source(ptr, img, y, x, c, mask, sn, sc, sh, sw):
    return tl.load(ptr + (img * sn + y * sh + x * sw)[:, None] + c[None, :] * sc, mask=mask, other=0.0)


@triton.jit
def _load_two_sources(x1_ptr, x2_ptr, img, y, x, k0, row_mask, C1, C_IN, top, left,
                      x1_sn, x1_sc, x1_sh, x1_sw, x2_sn, x2_sc, x2_sh, x2_sw, BLOCK_K: tl.constexpr):
    """The (rows, BLOCK_K) tile of the virtual concatenation [x1, window of x2] at the pixels
    (img, y, x) of the rows and the channels from k0 (zero where masked). A tile that lies in
    one source loads only from it."""
    ci = k0 + tl.arange(0, BLOCK_K)
    if k0 + BLOCK_K <= C1:
        tile = _load_source(x1_ptr, img, y, x, ci, row_mask[:, None] & (ci < C1)[None, :], x1_sn, x1_sc, x1_sh, x1_sw)
    elif k0 >= C1:
        tile = _load_source(x2_ptr, img, y + top, x + left, ci - C1,
                            row_mask[:, None] & (ci < C_IN)[None, :], x2_sn, x2_sc, x2_sh, x2_sw)
    else:
        tile = _load_source(x1_ptr, img, y, x, ci, row_mask[:, None] & (ci < C1)[None, :], x1_sn, x1_sc, x1_sh, x1_sw)
        tile += _load_source(x2_ptr, img, y + top, x + left, ci - C1,
                             row_mask[:, None] & ((ci >= C1) & (ci < C_IN))[None, :], x2_sn, x2_sc, x2_sh, x2_sw)
    return tile


@triton.jit
def _pixel(index, H, W):
    """(image, y, x) of the pixels with flat index `index` in images of H x W."""
    return index // (H * W), index % (H * W) // W, index % W


@triton.jit
def _masked_grad(g_ptr, y_ptr, offset, mask, RELU: tl.constexpr):
    """The incoming gradient at `offset`, zero where the saved output says the ReLU was off."""
    g = tl.load(g_ptr + offset, mask=mask, other=0.0)
    if RELU:
        out = tl.load(y_ptr + offset, mask=mask, other=0.0)
        g = tl.where(out <= 0, 0.0, g)  # a NaN output passes its gradient, as torch's
    return g


@triton.jit
def conv3x3_forward_kernel(
    x1_ptr, x2_ptr, w_ptr, b_ptr, out_ptr,
    M, OH, OW, C1, C_IN, C_OUT, top, left,
    x1_sn, x1_sc, x1_sh, x1_sw, x2_sn, x2_sc, x2_sh, x2_sw,
    w_so, w_si, w_sh, w_sw, o_sn, o_sc, o_sh, o_sw,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    co_mask = co < C_OUT
    img, oy, ox = _pixel(rows, OH, OW)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for tap in range(9):
        for k0 in range(0, C_IN, BLOCK_K):
            ci = k0 + tl.arange(0, BLOCK_K)
            a = _load_two_sources(x1_ptr, x2_ptr, img, oy + tap // 3, ox + tap % 3, k0, row_mask, C1, C_IN, top, left,
                                  x1_sn, x1_sc, x1_sh, x1_sw, x2_sn, x2_sc, x2_sh, x2_sw, BLOCK_K)
            w = tl.load(w_ptr + co[None, :] * w_so + ci[:, None] * w_si + (tap // 3) * w_sh + (tap % 3) * w_sw,
                        mask=co_mask[None, :] & (ci < C_IN)[:, None], other=0.0)
            if UPCAST:
                a = a.to(ACC)
                w = w.to(ACC)
            acc += tl.dot(a, w, out_dtype=ACC, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_mask, other=0.0).to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # keeps NaN, as torch.relu
    offset = (img * o_sn + oy * o_sh + ox * o_sw)[:, None] + co[None, :] * o_sc
    tl.store(out_ptr + offset, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & co_mask[None, :])


@triton.jit
def conv3x3_input_grad_kernel(
    g_ptr, y_ptr, w_ptr, gx1_ptr, gx2_ptr,
    M, H, W, OH, OW, C1, C_IN, C_OUT, top, left,
    g_sn, g_sc, g_sh, g_sw, w_so, w_si, w_sh, w_sw,
    gx1_sn, gx1_sc, gx1_sh, gx1_sw, gx2_sn, gx2_sc, gx2_sh, gx2_sw,
    RELU: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ci = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    ci_mask = ci < C_IN
    img, iy, ix = _pixel(rows, H, W)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for tap in range(9):
        oy = iy - tap // 3
        ox = ix - tap % 3
        inside = row_mask & (oy >= 0) & (oy < OH) & (ox >= 0) & (ox < OW)
        for k0 in range(0, C_OUT, BLOCK_K):
            co = k0 + tl.arange(0, BLOCK_K)
            offset = (img * g_sn + oy * g_sh + ox * g_sw)[:, None] + co[None, :] * g_sc
            g = _masked_grad(g_ptr, y_ptr, offset, inside[:, None] & (co < C_OUT)[None, :], RELU)
            w = tl.load(w_ptr + co[:, None] * w_so + ci[None, :] * w_si + (tap // 3) * w_sh + (tap % 3) * w_sw,
                        mask=(co < C_OUT)[:, None] & ci_mask[None, :], other=0.0)
            if UPCAST:
                g = g.to(ACC)
                w = w.to(ACC)
            acc += tl.dot(g, w, out_dtype=ACC, input_precision=PRECISION)
    value = acc.to(gx1_ptr.dtype.element_ty)
    to1 = row_mask[:, None] & (ci < C1)[None, :]
    tl.store(gx1_ptr + (img * gx1_sn + iy * gx1_sh + ix * gx1_sw)[:, None] + ci[None, :] * gx1_sc, value, mask=to1)
    to2 = row_mask[:, None] & ((ci >= C1) & ci_mask)[None, :]
    offset2 = (img * gx2_sn + (iy + top) * gx2_sh + (ix + left) * gx2_sw)[:, None] + (ci - C1)[None, :] * gx2_sc
    tl.store(gx2_ptr + offset2, value, mask=to2)


@triton.jit
def conv3x3_weight_grad_kernel(
    g_ptr, y_ptr, x1_ptr, x2_ptr, gw_ptr, gb_ptr,
    K, OH, OW, C1, C_IN, C_OUT, top, left, pixels_per_split,
    g_sn, g_sc, g_sh, g_sw, x1_sn, x1_sc, x1_sh, x1_sw, x2_sn, x2_sc, x2_sh, x2_sw,
    RELU: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gw (C_OUT, C_IN, 3, 3) and gb (C_OUT,): contiguous, in ACC, zero before the launch."""
    co = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tap = tl.program_id(1) % 9
    ci = tl.program_id(1) // 9 * BLOCK_N + tl.arange(0, BLOCK_N)
    co_mask = co < C_OUT
    first = tl.program_id(2) * pixels_per_split
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC)
    for k0 in range(0, pixels_per_split, BLOCK_K):
        pixels = first + k0 + tl.arange(0, BLOCK_K)
        pixel_mask = (pixels < K) & (k0 + tl.arange(0, BLOCK_K) < pixels_per_split)
        img, oy, ox = _pixel(pixels, OH, OW)
        offset = co[:, None] * g_sc + (img * g_sn + oy * g_sh + ox * g_sw)[None, :]
        g = _masked_grad(g_ptr, y_ptr, offset, co_mask[:, None] & pixel_mask[None, :], RELU)
        x = _load_two_sources(x1_ptr, x2_ptr, img, oy + tap // 3, ox + tap % 3, tl.program_id(1) // 9 * BLOCK_N,
                              pixel_mask, C1, C_IN, top, left, x1_sn, x1_sc, x1_sh, x1_sw, x2_sn, x2_sc, x2_sh, x2_sw,
                              BLOCK_N)
        if UPCAST:
            g = g.to(ACC)
            x = x.to(ACC)
        acc += tl.dot(g, x, out_dtype=ACC, input_precision=PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(g.to(ACC), axis=1)
    gw_offset = co[:, None] * (C_IN * 9) + ci[None, :] * 9 + tap
    tl.atomic_add(gw_ptr + gw_offset, acc, mask=co_mask[:, None] & (ci < C_IN)[None, :])
    if HAS_BIAS:
        tl.atomic_add(gb_ptr + co, bias_acc, mask=co_mask & (tl.program_id(1) == 0))


# The kernels as a GPU launches them, by (name, on tensor cores). Autotuning times every
# configuration on the call's own arguments, so the weight gradient's accumulators are zeroed
# before each trial.
_AUTOTUNED = {
    (kernel.__name__, on_tensor_cores): triton.autotune(configs, key=key, reset_to_zero=reset)(kernel)
    for kernel, key, reset in (
        (conv3x3_forward_kernel, ["M", "C_IN", "C_OUT"], None),
        (conv3x3_input_grad_kernel, ["M", "C_IN", "C_OUT"], None),
        (conv3x3_weight_grad_kernel, ["K", "C_IN", "C_OUT"], ["gw_ptr", "gb_ptr"]),
    )
    for on_tensor_cores, configs in GPU_CONFIGS.items()
}


def autotuned_tiles() -> list[dict]:
    """The tile each kernel autotuned to, per key (M or K, C_IN, C_OUT and the arguments'
    dtypes), in this process: what a GPU chose for the layers it ran. Empty under the
    interpreter, which does not autotune."""
    found = []
    for (name, on_tensor_cores), autotuner in _AUTOTUNED.items():
        for key, config in autotuner.cache.items():
            found.append({"kernel": name, "tensor_cores": on_tensor_cores, "key": key,
                          **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages})
    return found


def _check_int32_indexing(*tensors) -> None:
    """The kernels index in int32, as the U-Net's tensors allow (a batch of 8 at 572x572 is
    under a tenth of the limit)."""
    for tensor in tensors:
        if tensor is not None and tensor.numel() >= 2**31:
            raise ValueError(f"the Triton conv3x3 kernels take tensors of under 2**31 elements, got {tuple(tensor.shape)}")


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_precision(dtype: torch.dtype) -> str:
    """TF32 for fp32 operands where PyTorch lets cuDNN's convolutions use it
    (``torch.backends.cudnn.allow_tf32``, on by default), else full precision."""
    tf32 = dtype == torch.float32 and not INTERPRETED and torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "ieee"


def _interpreter_tiles(m: int, n: int, k: int) -> dict[str, int]:
    """Tiles for the interpreter: one program covers a GEMM of m x n with k per tap, up to
    _INTERPRETER_MAX."""
    fit = lambda size, cap: max(16, min(cap, triton.next_power_of_2(max(size, 1))))  # noqa: E731
    return {name: fit(size, cap) for name, size, cap in zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), (m, n, k), _INTERPRETER_MAX)}


def _launch(kernel, grid, gemm: tuple[int, int, int], dtype: torch.dtype, *args, **constexprs) -> None:
    """Runs `kernel` on operands of `dtype` over ``grid(tiles)`` for a GEMM of ``gemm`` =
    (m, n, k per tap): on a GPU with the tiles autotuned for its arguments, under the
    interpreter with one fitted tile."""
    precision = _dot_precision(dtype)
    if INTERPRETED:
        tiles = _interpreter_tiles(*gemm)
        kernel[grid(tiles)](*args, **constexprs, PRECISION=precision, **tiles, num_warps=4)
    else:
        on_tensor_cores = dtype in (torch.bfloat16, torch.float16) or precision == "tf32"
        _AUTOTUNED[kernel.__name__, on_tensor_cores][grid](*args, **constexprs, PRECISION=precision)


def _with_unit_stride(weight, dim: int):
    """weight (C_out, C_in, 3, 3) laid out taps first and with unit stride along `dim` (0 or
    1): the layout in which each tap's (C_in, C_out) tile loads contiguously."""
    order = (2, 3, 1 - dim, dim)
    inverse = sorted(range(4), key=order.__getitem__)
    return weight.permute(order).contiguous().permute(inverse)


def _sources(x1, x2):
    """The second source's channel count offset and strides (x1 again for a plain conv)."""
    return x1.shape[1], (*x1.stride(), *x2.stride())


def conv3x3_forward(x1, x2, weight, bias, out, relu: bool, top: int, left: int) -> None:
    """out (N, C_out, OH, OW) = relu(conv3x3([x1, x2 window]) + bias)."""
    _check_int32_indexing(x1, x2, out)
    n, c_out, oh, ow = out.shape
    c1, strides = _sources(x1, x2)
    m = n * oh * ow
    grid = lambda tiles: (triton.cdiv(m, tiles["BLOCK_M"]), triton.cdiv(c_out, tiles["BLOCK_N"]))  # noqa: E731
    weight = _with_unit_stride(weight, 0)
    _launch(
        conv3x3_forward_kernel, grid, (m, c_out, weight.shape[1]), out.dtype,
        x1, x2, weight, bias if bias is not None else weight, out,
        m, oh, ow, c1, weight.shape[1], c_out, top, left, *strides, *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None, RELU=relu, ACC=_acc_dtype(out.dtype), UPCAST=INTERPRETED,
    )


def _check_same_strides(grad_out, out) -> None:
    if out is not None and grad_out.stride() != out.stride():
        raise ValueError(f"grad_out strides {grad_out.stride()} must equal the saved output's {out.stride()}")


def conv3x3_input_grad(grad_out, out, weight, grad_x1, grad_x2, top: int, left: int) -> None:
    """Writes the data gradient into grad_x1 and the window of grad_x2 (zero elsewhere before
    the call); `out` is the saved ReLU output (with grad_out's strides), or None without the
    ReLU."""
    _check_same_strides(grad_out, out)
    _check_int32_indexing(grad_out, grad_x1, grad_x2)
    n, c1, h, w = grad_x1.shape
    c_out, c_in = weight.shape[:2]
    m = n * h * w
    grid = lambda tiles: (triton.cdiv(m, tiles["BLOCK_M"]), triton.cdiv(c_in, tiles["BLOCK_N"]))  # noqa: E731
    weight = _with_unit_stride(weight, 1)
    _launch(
        conv3x3_input_grad_kernel, grid, (m, c_in, c_out), grad_out.dtype,
        grad_out, out if out is not None else grad_out, weight, grad_x1, grad_x2,
        m, h, w, grad_out.shape[2], grad_out.shape[3], c1, c_in, c_out, top, left,
        *grad_out.stride(), *weight.stride(), *grad_x1.stride(), *grad_x2.stride(),
        RELU=out is not None, ACC=_acc_dtype(grad_out.dtype), UPCAST=INTERPRETED,
    )


def conv3x3_weight_grad(grad_out, out, x1, x2, grad_weight, grad_bias, top: int, left: int) -> None:
    """Adds the weight (and, if grad_bias is given, bias) gradients into grad_weight
    (C_out, C_in, 3, 3) and grad_bias (C_out,), contiguous accumulators that start at zero."""
    _check_same_strides(grad_out, out)
    _check_int32_indexing(grad_out, x1, x2)
    n, c_out, oh, ow = grad_out.shape
    c_in = grad_weight.shape[1]
    c1, strides = _sources(x1, x2)
    pixels = n * oh * ow
    per_split = pixels if INTERPRETED else _GPU_SPLIT_PIXELS
    grid = lambda tiles: (  # noqa: E731
        triton.cdiv(c_out, tiles["BLOCK_M"]), triton.cdiv(c_in, tiles["BLOCK_N"]) * 9, triton.cdiv(pixels, per_split))
    _launch(
        conv3x3_weight_grad_kernel, grid, (c_out, c_in, pixels), grad_out.dtype,
        grad_out, out if out is not None else grad_out, x1, x2, grad_weight,
        grad_bias if grad_bias is not None else grad_weight,
        pixels, oh, ow, c1, c_in, c_out, top, left, per_split, *grad_out.stride(), *strides,
        RELU=out is not None, HAS_BIAS=grad_bias is not None, ACC=_acc_dtype(grad_weight.dtype),
        UPCAST=INTERPRETED,
    )


def weight_and_bias_grad(grad_out, out, x1, x2, weight, with_bias: bool, top: int, left: int):
    """(the weight's gradient with the weight's strides, the bias's or None), accumulated in
    fp32 (fp64 for fp64) by conv3x3_weight_grad. Its atomic sums are added in no fixed order,
    so under ``torch.use_deterministic_algorithms(True)`` it raises (warns with warn_only), as
    PyTorch's own nondeterministic kernels do."""
    _alert_not_deterministic()
    accumulator = torch.float64 if weight.dtype == torch.float64 else torch.float32
    weight_sum = weight.new_zeros(weight.shape, dtype=accumulator)
    bias_sum = weight.new_zeros(weight.shape[0], dtype=accumulator) if with_bias else None
    conv3x3_weight_grad(grad_out, out, x1, x2, weight_sum, bias_sum, top, left)
    return torch.empty_like(weight).copy_(weight_sum), bias_sum.to(weight.dtype) if with_bias else None


def _alert_not_deterministic() -> None:
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = ("unet_fast's Triton weight gradient of the 3x3 convolution sums with atomics, so its result is "
               "not deterministic: use backend='cuda' or backend='torch', or torch.use_deterministic_algorithms(False)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(message)


# The GPU layout: activations and gradients channels_last, weights packed by the launchers so
# that the channel dimension each tile walks along has unit stride.
_UNIT_STRIDES = {
    "conv3x3_forward_kernel": ("x1_sc", "x2_sc", "w_so", "o_sc"),
    "conv3x3_input_grad_kernel": ("g_sc", "w_si", "gx1_sc", "gx2_sc"),
    "conv3x3_weight_grad_kernel": ("g_sc", "x1_sc", "x2_sc"),
}


def aot_configurations():
    """(kernel, signature, constexprs, options) of every configuration the launchers above use
    on a GPU, for ahead-of-time compilation (unet_fast.kernels.aot)."""
    for dtype, precision in (("fp32", "tf32"), ("fp32", "ieee"), ("bf16", "ieee")):
        for config in GPU_CONFIGS[dtype == "bf16" or precision == "tf32"]:
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            if config.maxnreg is not None:
                options["maxnreg"] = config.maxnreg
            common = {**config.kwargs, "ACC": tl.float32, "UPCAST": False, "PRECISION": precision}
            for kernel, pointers, accumulators, flags in _AOT_KERNELS:
                for relu in (True, False):
                    constexprs = {**common, **flags, "RELU": relu}
                    yield (*_configuration(kernel, dtype, pointers, accumulators, constexprs), options)


# (kernel, tensor arguments, of which fp32 accumulators, flags) for aot_configurations.
_AOT_KERNELS = (
    (conv3x3_forward_kernel, 5, 0, {"HAS_BIAS": True}),
    (conv3x3_input_grad_kernel, 5, 0, {}),
    (conv3x3_weight_grad_kernel, 6, 2, {"HAS_BIAS": True}),
)


def _configuration(kernel, dtype: str, pointers: int, accumulators: int, constexprs: dict):
    """The kernel's first `pointers` arguments are tensors of `dtype` (the last `accumulators`
    of them fp32), its unit strides constants, the other integers i32."""
    constexprs = {**constexprs, **{name: 1 for name in _UNIT_STRIDES[kernel.__name__]}}
    signature = {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif i < pointers:
            signature[name] = "*fp32" if i >= pointers - accumulators else f"*{dtype}"
        else:
            signature[name] = "i32"
    return kernel, signature, constexprs
