"""The U-Net paper's energy function: a pixel-wise softmax with a cross-entropy in which every
pixel has its own weight, fused into one pass that also produces the gradient.

For logits z (N, C, H, W), labels t (N, H, W), pixel weights w (N, H, W) and class weights
c (C,), with a missing factor meaning 1:

    ce(x) = logsumexp_k z_k(x) - z_t(x)(x)
    v(x)  = w(x) * c[t(x)]            (0 where t(x) == ignore_index)
    'none': v(x) * ce(x) per pixel;  'sum': sum_x v ce;  'mean': sum_x v ce / sum_x v

With only class weights, 'mean' equals ``F.cross_entropy(z, t, weight=c, ignore_index=...)``.
The gradient, d/dz_k = (softmax_k - [k == t]) v / (sum v for 'mean'), flows to the logits
only: the weights are data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast.ops import backends
from unet_fast.ops._checks import FLOATING_DTYPES, check_tensor

__all__ = ["weighted_softmax_cross_entropy"]

REDUCTIONS = ("none", "mean", "sum")
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def weighted_softmax_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Pixel-weighted softmax cross-entropy (definitions in the module docstring).

    logits (N, C, H, W) float32/bf16/fp16/fp64 (accumulated in fp32 or better), target (N, H, W)
    integer labels in [0, C) or ``ignore_index``, weight (N, H, W) per-pixel weights or None,
    class_weight (C,) or None. Returns a scalar for 'mean'/'sum', (N, H, W) for 'none', in
    the logits' dtype. On CPU, labels out of range raise; NaN logits give NaN."""
    _check_args(logits, target, weight, class_weight, ignore_index, reduction)
    chosen = _resolve(backend, logits.device)
    if chosen != "cpu" and logits.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_labels(target, logits.shape[1], ignore_index)
    if chosen == "torch":
        return weighted_softmax_cross_entropy_composite(logits, target, weight, class_weight, ignore_index, reduction)
    op = torch.ops.unet_fast.weighted_softmax_cross_entropy_triton if chosen == "triton" else torch.ops.unet_fast.weighted_softmax_cross_entropy
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, _ = op(logits, target, weight, class_weight, ignore_index, reduction, compute_grad)
    return loss


@backends.constant_when_compiled
def _resolve(backend, device):
    return backends.resolve_backend("weighted_softmax_cross_entropy", backend, device)


def weighted_softmax_cross_entropy_composite(logits, target, weight, class_weight, ignore_index, reduction):
    """The same loss from stock PyTorch ops: the reference the kernels are tested against."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    ce = F.cross_entropy(logits.to(acc), target.long(), reduction="none", ignore_index=ignore_index)
    valid = target != ignore_index
    v = valid.to(acc)
    if weight is not None:
        v = v * weight.to(acc)
    if class_weight is not None:
        v = v * class_weight.to(acc)[torch.where(valid, target.long(), 0)]
    loss = ce * v
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum()
    return (total / v.sum() if reduction == "mean" else total).to(logits.dtype)


def _check_args(logits, target, weight, class_weight, ignore_index, reduction) -> None:
    check_tensor("logits", logits, dim=4, layout="(N, C, H, W)")
    check_tensor("target", target, dim=3, layout="(N, H, W) labels", dtypes=_INTEGER_DTYPES)
    n, classes, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"target must have shape (N, H, W) = {(n, h, w)} to match logits, got {tuple(target.shape)}")
    tensors = {"logits": logits, "target": target}
    if weight is not None:
        check_tensor("weight", weight, dim=3, layout="(N, H, W) pixel weights", dtypes=FLOATING_DTYPES)
        if weight.shape != target.shape:
            raise ValueError(f"weight must have the shape of target {tuple(target.shape)}, got {tuple(weight.shape)}")
        tensors["weight"] = weight
    if class_weight is not None:
        check_tensor("class_weight", class_weight, dim=1, layout="(C,)", dtypes=FLOATING_DTYPES)
        if class_weight.shape[0] != classes:
            raise ValueError(f"class_weight must have C = {classes} entries, got {class_weight.shape[0]}")
        tensors["class_weight"] = class_weight
    for name, tensor in tensors.items():
        if tensor.device != logits.device:
            raise ValueError(f"{name} is on {tensor.device} but logits is on {logits.device}")
        if name != "logits" and tensor.requires_grad:
            raise ValueError(f"{name} requires grad, but gradients flow to the logits only: pass {name}.detach()")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")


def _check_labels(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bad.any():
        value = target[bad][0].item()
        raise ValueError(f"target holds label {value}; labels must be in [0, {classes}) or ignore_index ({ignore_index})")


def _fake(logits, target, weight, class_weight, ignore_index, reduction, compute_grad):
    n, _, h, w = logits.shape
    loss = logits.new_empty((n, h, w) if reduction == "none" else ())
    grad = logits.new_empty(logits.shape if compute_grad else (0,))
    return loss, grad


def _setup_context(ctx, inputs, output):
    logits, target, weight, class_weight, ctx.ignore_index, ctx.reduction = inputs[:6]
    ctx.save_for_backward(logits, target, weight, class_weight)  # for create_graph=True only
    ctx.grad_logits = output[1]
    ctx.mark_non_differentiable(output[1])
    # The gradient output is data: no N x C x H x W zeros for its (absent) incoming gradient.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _):
    """The gradient was computed in the forward for grad_output = 1; it is scaled into a new
    tensor, so that each backward hands out its own and a retained graph can run again."""
    grad = ctx.grad_logits
    if grad_loss is None:  # only the (non-differentiable) gradient output was given a grad
        return None, None, None, None, None, None, None
    if torch.is_grad_enabled():  # backward(create_graph=True): the composite's, differentiable again
        logits, target, weight, class_weight = ctx.saved_tensors
        loss = weighted_softmax_cross_entropy_composite(logits, target, weight, class_weight, ctx.ignore_index,
                                                        ctx.reduction)
        (grad,) = torch.autograd.grad(loss, logits, grad_loss, create_graph=True)
        return grad, None, None, None, None, None, None
    if ctx.reduction == "none":
        grad_loss = grad_loss.unsqueeze(1)
    return grad * grad_loss, None, None, None, None, None, None


def _register(op) -> None:
    torch.library.register_fake(op)(_fake)
    torch.library.register_autograd(op, _backward, setup_context=_setup_context)


@torch.library.custom_op("unet_fast::weighted_softmax_cross_entropy_triton", mutates_args=())
def _weighted_softmax_cross_entropy_triton(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from unet_fast.kernels import weighted_cross_entropy as kernels

    return kernels.weighted_softmax_cross_entropy(logits, target, weight, class_weight, ignore_index, reduction, compute_grad)


_register(_weighted_softmax_cross_entropy_triton)
if backends.extension_loaded():
    _register(torch.ops.unet_fast.weighted_softmax_cross_entropy.default)
