"""Triton kernels of the pixel-weighted softmax cross-entropy. One program takes a block of
pixels with all their classes, computes the loss and (if asked) the gradient for
grad_output = 1 in the same pass; per-program loss sums are added on the device afterwards,
in a fixed order. A first, cheap kernel sums the pixel weights for 'mean'. Labels out of
range give NaN (a GPU kernel cannot raise)."""

import torch
import triton
import triton.language as tl

from unet_fast.kernels import INTERPRETED

MAX_CLASSES = 256
_GPU_TILE = 4096  # classes x pixels per program (checked free of spills by unet_fast.kernels.aot)
_GPU_MAX_PIXELS = 1024  # 2 classes x 2048 pixels spills on sm_90
_INTERPRETER_TILE = 1 << 16


@triton.jit
def _pixel_weights(t_ptr, w_ptr, cw_ptr, n, p, mask, ignore_index, C, t_sn, t_sh, t_sw, w_sn, w_sh, w_sw, W,
                   HAS_WEIGHT: tl.constexpr, HAS_CLASS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """The pixels' labels, whether each counts (not ignored) and whether its label is a class,
    and their weights; offsets in int64 (an image may hold more than 2^31 elements)."""
    y = p // W
    x = p % W
    label = tl.load(t_ptr + n * t_sn + y * t_sh + x * t_sw, mask=mask, other=ignore_index).to(tl.int64)
    valid = mask & (label != ignore_index)
    in_range = (label >= 0) & (label < C)
    v = tl.where(valid, 1.0, 0.0).to(ACC)
    if HAS_WEIGHT:
        v *= tl.load(w_ptr + n * w_sn + y * w_sh + x * w_sw, mask=valid, other=0.0).to(ACC)
    if HAS_CLASS_WEIGHT:  # never read past the class weights: a bad label's loss is NaN anyway
        v *= tl.load(cw_ptr + tl.where(valid & in_range, label, 0), mask=valid & in_range, other=0.0).to(ACC)
    return label, valid, in_range, v


@triton.jit
def weight_sum_kernel(
    t_ptr, w_ptr, cw_ptr, partial_ptr, ignore_index, C, HW, W, blocks_per_image,
    t_sn, t_sh, t_sw, w_sn, w_sh, w_sw,
    BLOCK_P: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_CLASS_WEIGHT: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // blocks_per_image).to(tl.int64)
    p = (pid % blocks_per_image).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = p < HW
    _, _, _, v = _pixel_weights(t_ptr, w_ptr, cw_ptr, n, p, mask, ignore_index, C, t_sn, t_sh, t_sw,
                                w_sn, w_sh, w_sw, W, HAS_WEIGHT, HAS_CLASS_WEIGHT, ACC)
    tl.store(partial_ptr + pid, tl.sum(v, axis=0))


@triton.jit
def forward_kernel(
    z_ptr, t_ptr, w_ptr, cw_ptr, denom_ptr, loss_ptr, grad_ptr, partial_ptr,
    ignore_index, C, HW, W, blocks_per_image,
    z_sn, z_sc, z_sh, z_sw, t_sn, t_sh, t_sw, w_sn, w_sh, w_sw,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_CLASS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, PER_PIXEL: tl.constexpr, GRAD: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // blocks_per_image).to(tl.int64)
    p = (pid % blocks_per_image).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask = p < HW
    tile_mask = (c[:, None] < C) & mask[None, :]
    y = p // W
    x = p % W
    z = tl.load(z_ptr + n * z_sn + c[:, None] * z_sc + (y * z_sh + x * z_sw)[None, :], mask=tile_mask,
                other=-float("inf")).to(ACC)
    label, valid, in_range, v = _pixel_weights(t_ptr, w_ptr, cw_ptr, n, p, mask, ignore_index, C, t_sn, t_sh,
                                               t_sw, w_sn, w_sh, w_sw, W, HAS_WEIGHT, HAS_CLASS_WEIGHT, ACC)
    zmax = tl.max(z, axis=0)
    e = tl.exp(z - zmax[None, :])
    total = tl.sum(e, axis=0)
    is_target = c[:, None] == label[None, :]
    z_target = tl.sum(tl.where(is_target, z, 0.0), axis=0)
    bad = valid & ~in_range
    # (max - z_t) + log(sum) rather than logsumexp - z_t: no cancellation of large numbers.
    loss = tl.where(valid, v * ((zmax - z_target) + tl.log(total)), 0.0)
    loss = tl.where(bad, float("nan"), loss)
    if PER_PIXEL:
        tl.store(loss_ptr + n * HW + p, loss, mask=mask)
    else:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    if GRAD:
        scale = v
        if MEAN:
            scale = v / tl.load(denom_ptr).to(ACC)
        grad = (e / total[None, :] - tl.where(is_target, 1.0, 0.0)) * scale[None, :]
        grad = tl.where(bad[None, :], float("nan"), grad)
        grad_offsets = n * C * HW + c[:, None] * HW + p[None, :]
        tl.store(grad_ptr + grad_offsets, grad, mask=tile_mask)


def _tiles(classes: int, hw: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(classes)
    if INTERPRETED:
        return block_c, max(16, min(_INTERPRETER_TILE // block_c, triton.next_power_of_2(hw)))
    return block_c, max(16, min(_GPU_TILE // block_c, _GPU_MAX_PIXELS, triton.next_power_of_2(hw)))


def weighted_softmax_cross_entropy(logits, target, weight, class_weight, ignore_index, reduction, compute_grad):
    """Launches the kernels; returns (loss, gradient for grad_output = 1 or an empty tensor)."""
    n, classes, h, w = logits.shape
    if classes > MAX_CLASSES:
        raise ValueError(f"the Triton kernel takes at most {MAX_CLASSES} classes, got {classes}")
    hw = h * w
    block_c, block_p = _tiles(classes, hw)
    blocks_per_image = triton.cdiv(hw, block_p)
    grid = (n * blocks_per_image,)
    device = logits.device
    acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty((n, h, w) if reduction == "none" else (), device=device, dtype=acc_dtype)
    grad = torch.empty(logits.shape if compute_grad else (0,), device=device, dtype=logits.dtype)
    if grid[0] == 0:
        return loss.fill_(0.0 if reduction == "sum" else float("nan")).to(logits.dtype), grad
    w_arg = weight if weight is not None else target
    cw_arg = class_weight if class_weight is not None else logits
    w_strides = weight.stride() if weight is not None else (0, 0, 0)
    flags = dict(HAS_WEIGHT=weight is not None, HAS_CLASS_WEIGHT=class_weight is not None)
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    denom = torch.ones((), device=device, dtype=acc_dtype)
    if reduction == "mean":
        weight_partials = torch.empty(grid[0], device=device, dtype=acc_dtype)
        weight_sum_kernel[grid](target, w_arg, cw_arg, weight_partials, ignore_index, classes, hw, w, blocks_per_image,
                                *target.stride(), *w_strides, BLOCK_P=block_p, ACC=acc, **flags)
        denom = weight_partials.sum()
    partials = torch.empty(grid[0], device=device, dtype=acc_dtype)
    forward_kernel[grid](
        logits, target, w_arg, cw_arg, denom, loss, grad, partials, ignore_index, classes, hw, w,
        blocks_per_image, *logits.stride(), *target.stride(), *w_strides,
        BLOCK_C=block_c, BLOCK_P=block_p, MEAN=reduction == "mean", PER_PIXEL=reduction == "none",
        GRAD=compute_grad, ACC=acc, **flags,
    )
    if reduction != "none":
        loss = partials.sum()
        if reduction == "mean":
            loss = loss / denom
    return loss.to(logits.dtype), grad


def aot_configurations():
    """(kernel, signature, constexprs) of the configurations the launcher uses on a GPU for a
    range of class counts, for ahead-of-time compilation (unet_fast.kernels.aot)."""
    flags = {"HAS_WEIGHT": True, "HAS_CLASS_WEIGHT": True, "ACC": tl.float32}
    label_pointers = {"t_ptr": "*i64", "w_ptr": "*fp32", "cw_ptr": "*fp32"}
    signature = {name: "i64" for name in weight_sum_kernel.arg_names}
    signature.update(label_pointers, partial_ptr="*fp32", BLOCK_P="constexpr")
    signature.update({name: "constexpr" for name in flags})
    yield weight_sum_kernel, signature, {"BLOCK_P": 1024, **flags}
    for dtype in ("fp32", "bf16"):
        for classes in (2, 64, MAX_CLASSES):
            block_c, block_p = _tiles(classes, 1 << 20)
            signature = {name: "i64" for name in forward_kernel.arg_names}
            signature.update(label_pointers, z_ptr=f"*{dtype}", grad_ptr=f"*{dtype}", denom_ptr="*fp32",
                             loss_ptr="*fp32", partial_ptr="*fp32")
            constexprs = {"BLOCK_C": block_c, "BLOCK_P": block_p, "MEAN": True, "PER_PIXEL": False, "GRAD": True, **flags}
            signature.update({name: "constexpr" for name in constexprs})
            yield forward_kernel, signature, constexprs
