"""conv3x3_bias_relu: a valid (unpadded) 3x3 convolution, stride 1, with its bias and an
optional ReLU in one op, the building block of every U-Net stage.

The output is channels_last, the layout in which oneDNN's CPU convolutions run fastest. The
backward masks the incoming gradient with the saved output (``out > 0`` exactly where the
pre-activation was positive, so none is kept) and sums it for the bias in the same pass; the
data and weight gradients are computed each only if needed. On the CPU each pass runs by the
algorithm :mod:`unet_fast.tuning` measured fastest for its shape on this machine. Under
``torch.autocast`` the op runs in the autocast dtype, as ``F.conv2d`` does; on the CPU it takes
float32 weights and biases as they are and returns their gradients summed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch._subclasses.fake_tensor import is_fake

from unet_fast import tuning
from unet_fast.ops import backends
from unet_fast.ops._checks import check_parameter_like, check_tensor

__all__ = ["conv3x3_bias_relu"]


def conv3x3_bias_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = True,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias))`` (without the ReLU if ``relu=False``) for x (N, C_in,
    H, W), weight (C_out, C_in, 3, 3), bias (C_out,) or None; returns (N, C_out, H-2, W-2)."""
    chosen = resolve_conv_backend(backend, x.device) if isinstance(x, torch.Tensor) else None
    master = takes_master_parameters(chosen, x)
    (x,), (weight, bias) = autocast_inputs((x,), (weight, bias), master)
    check_conv_args(x, weight, bias, relu, master)
    if chosen == "torch":
        return conv3x3_bias_relu_composite(x, weight, bias, relu)
    return forward_on(chosen, x, weight, bias, relu)


def forward_on(backend: str, x, weight, bias, relu):
    """The custom op of a kernel backend ("cpu", "cuda" or "triton")."""
    if backend == "triton":
        return torch.ops.unet_fast.conv3x3_bias_relu_triton(x, weight, bias, relu)
    if backend == "cuda":
        return torch.ops.unet_fast.conv3x3_bias_relu(x, weight, bias, relu)
    return tuned(torch.ops.unet_fast.conv3x3_bias_relu, tuning.ConvShape.of("forward", x, weight), x, weight, bias,
                 relu)


def backward_on(backend: str, grad_out, x, weight, out, output_mask, relu_input: bool = False):
    """The backward op of a kernel backend ("cpu", "cuda" or "triton"); with `relu_input`, x's
    gradient also goes through the backward of the ReLU whose output x is. Under
    ``backward(create_graph=True)`` (grad mode is on only then) the composite's, which can be
    differentiated again: the kernels' backward passes cannot."""
    if torch.is_grad_enabled():
        return composite_backward(grad_out, x, weight, out, output_mask, relu_input)
    if backend == "triton":
        grad_x, grad_weight, grad_bias = torch.ops.unet_fast.conv3x3_bias_relu_triton_backward(
            grad_out, x, weight, out, output_mask)
        if relu_input and grad_x is not None:
            grad_x = torch.where(x <= 0, 0, grad_x)
        return grad_x, grad_weight, grad_bias
    if backend == "cuda":
        return torch.ops.unet_fast.conv3x3_bias_relu_backward(grad_out, x, weight, out, output_mask,
                                                              relu_input=relu_input)
    return tuned_backward(grad_out, x, weight, out, output_mask, relu_input)


@backends.constant_when_compiled
def resolve_conv_backend(backend, device):
    return backends.resolve_backend("conv3x3_bias_relu", backend, device)


def tuned(op, shape: tuning.ConvShape, *args):
    """``op(*args, algorithm)`` by this forward's tuned algorithm (measured on its first calls);
    under torch.compile by the algorithm settled when it traced."""
    if torch.compiler.is_compiling():
        return op(*args, compiled_algorithm(*vars(shape).values()))
    return tuning.run(shape, lambda algorithm: op(*args, algorithm), can_measure=not is_fake(args[0]))


@backends.constant_when_compiled
def compiled_algorithm(kind, dtype, images, c_in, c_out, out_h, out_w) -> str:
    return tuning.settled(tuning.ConvShape(kind, dtype, images, c_in, c_out, out_h, out_w)).algorithm


def tuned_backward(grad_out, x, weight, out, output_mask, relu_input=False):
    """The CPU backward, each convolution pass by its tuned algorithm."""
    op = torch.ops.unet_fast.conv3x3_bias_relu_backward
    data, weights = tuning.ConvShape.of("data_grad", x, weight), tuning.ConvShape.of("weight_grad", x, weight)
    if torch.compiler.is_compiling():
        return op(grad_out, x, weight, out, output_mask, compiled_algorithm(*vars(data).values()),
                  compiled_algorithm(*vars(weights).values()), relu_input)
    passes = []
    if output_mask[0]:
        passes.append((data, lambda a: op(grad_out, x, weight, out, [True, False, output_mask[2]], a, "direct",
                                          relu_input)))
    if output_mask[1]:
        passes.append((weights, lambda a: op(grad_out, x, weight, out, [False, True, False], "direct", a)))

    def together(algorithms):
        return op(grad_out, x, weight, out, output_mask, algorithms.get(data, "direct"),
                  algorithms.get(weights, "direct"), relu_input)

    return tuning.run_backward(passes, together, can_measure=not is_fake(grad_out))


def conv3x3_bias_relu_composite(x, weight, bias, relu):
    """The stock-PyTorch form, the reference the kernels are tested against."""
    out = F.conv2d(x, weight, bias)
    return F.relu(out) if relu else out


def composite_backward(grad_out, x, weight, out, output_mask, relu_input=False):
    """backward_on's gradients by stock differentiable ops: the ReLU's backward as torch's
    (zero where out <= 0), ATen's convolution backward, and x's own ReLU if `relu_input`.
    With `relu_input`, x enters the graph as relu(x) (the same values): a gradient that reaches
    x through this graph goes through that ReLU's backward too, as x's own node expects."""
    if relu_input:
        x = F.relu(x)
    weight = weight.to(x.dtype)  # float32 master parameters under autocast (differentiably)
    grad = grad_out if out is None else torch.where(out <= 0, 0, grad_out)
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, list(output_mask))
    if relu_input and grad_x is not None:
        grad_x = torch.where(x <= 0, 0, grad_x)
    return grad_x, grad_weight, grad_bias


def takes_master_parameters(backend: str | None, x) -> bool:
    """Whether an op on `backend` takes autocast's float32 weights and biases as they are with
    activations in the autocast dtype: the C++ CPU kernels do (a pass computed in fp32 then
    reads them with no cast, and their gradients are summed in fp32 and returned as such,
    never rounded to bf16), and are given them only under autocast."""
    return backend == "cpu" and isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)


def autocast_inputs(activations: tuple, parameters: tuple, master_parameters: bool = False) -> tuple[tuple, tuple]:
    """The floating-point tensors in the autocast dtype of the first activation's device while
    autocast is on; with `master_parameters` the float32 parameters stay as they are."""
    x = activations[0]
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return activations, parameters
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t, keep=False):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or (keep and t.dtype == torch.float32):
            return t
        return t.to(dtype)

    return tuple(cast(t) for t in activations), tuple(cast(t, master_parameters) for t in parameters)


def check_conv_args(x, weight, bias, relu, master_parameters: bool = False) -> None:
    check_tensor("x", x, dim=4, layout="(N, C_in, H, W)")
    check_filter(weight, bias, relu, x, x.shape[1], tuple(x.shape[2:]), input_name="x",
                 master_parameters=master_parameters)


def check_filter(weight, bias, relu, like: torch.Tensor, in_channels: int, size: tuple, input_name: str,
                 master_parameters: bool = False) -> None:
    """Checks a 3x3 convolution's weight, bias and relu for an input of `in_channels` and
    spatial `size`, on the device and in the dtype of `like` (or float32, with
    `master_parameters`)."""
    check_tensor("weight", weight, dim=4, layout="(C_out, C_in, 3, 3)")
    check_parameter_like("weight", weight, input_name, like, master_parameters)
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be (C_out, C_in, 3, 3), got kernel size {tuple(weight.shape[2:])}")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must have at least one output and one input channel, got shape {tuple(weight.shape)}")
    if weight.shape[1] != in_channels:
        raise ValueError(f"weight takes {weight.shape[1]} input channels but {input_name} has {in_channels}")
    if size[0] < 3 or size[1] < 3:
        raise ValueError(f"{input_name} must be at least 3x3 for a valid 3x3 convolution, got {size}")
    if bias is not None:
        check_tensor("bias", bias, dim=1, layout="(C_out,)")
        check_parameter_like("bias", bias, input_name, like, master_parameters)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have C_out = {weight.shape[0]} entries, got {bias.shape[0]}")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")


def new_conv_output(x, weight):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h - 2, w - 2)).contiguous(memory_format=torch.channels_last)


def _fake(x, weight, bias, relu, algorithm="direct"):
    return new_conv_output(x, weight)


def _fake_backward(grad_out, x, weight, out, output_mask, data_algorithm="direct", weight_algorithm="direct",
                   relu_input=False):
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if output_mask[0] else None
    grad_weight = torch.empty_like(weight) if output_mask[1] else None
    grad_bias = weight.new_empty(weight.shape[0]) if output_mask[2] else None
    return grad_x, grad_weight, grad_bias


def _setup_context(ctx, inputs, output):
    x, weight, bias, relu = inputs[:4]
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.has_bias = bias is not None


def _register(forward_op, backward_op) -> None:
    """Fake impls and autograd for one backend's pair of ops."""

    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        return (*backward_on("triton", grad_out, x, weight, out, mask), None)

    torch.library.register_fake(forward_op)(_fake)
    torch.library.register_fake(backward_op)(_fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)



@torch.library.custom_op("unet_fast::conv3x3_bias_relu_triton", mutates_args=())
def _conv3x3_bias_relu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    from unet_fast.kernels import conv3x3 as kernels

    x = x.contiguous(memory_format=torch.channels_last)
    out = new_conv_output(x, weight)
    kernels.conv3x3_forward(x, x, weight, bias, out, relu, 0, 0)
    return out


@torch.library.custom_op(
    "unet_fast::conv3x3_bias_relu_triton_backward",
    mutates_args=(),
    # as the C++ op's: a gradient not asked for in output_mask is None
    schema="(Tensor grad_out, Tensor x, Tensor weight, Tensor? out, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
)
def _conv3x3_bias_relu_triton_backward(grad_out, x, weight, out, output_mask):
    from unet_fast.kernels import conv3x3 as kernels

    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    if out is not None:
        out = out.contiguous(memory_format=torch.channels_last)
    grad_x = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_x = torch.empty_like(x)
        kernels.conv3x3_input_grad(grad_out, out, weight, grad_x, grad_x, 0, 0)
    if output_mask[1] or output_mask[2]:
        grad_weight, grad_bias = kernels.weight_and_bias_grad(grad_out, out, x, x, weight, output_mask[2], 0, 0)
    return grad_x, grad_weight if output_mask[1] else None, grad_bias


_register(_conv3x3_bias_relu_triton, _conv3x3_bias_relu_triton_backward)
if backends.extension_loaded():
    # one op for the CPU and CUDA kernels: the CPU's backward by tuned algorithms, CUDA's by cuDNN's
    _forward, _backward = torch.ops.unet_fast.conv3x3_bias_relu.default, torch.ops.unet_fast.conv3x3_bias_relu_backward.default
    torch.library.register_fake(_forward)(_fake)
    torch.library.register_fake(_backward)(_fake_backward)

    def _extension_backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        return (*backward_on(grad_out.device.type, grad_out, x, weight, out, mask), None, None)

    torch.library.register_autograd(_forward, _extension_backward, setup_context=_setup_context)
