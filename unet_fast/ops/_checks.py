"""Argument checks shared by the ops: each error names the argument and what was expected."""

from __future__ import annotations

import torch

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, value, *, dim: int, layout: str, dtypes=FLOATING_DTYPES) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {layout}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(value.dtype).removeprefix('torch.')}")


def check_same_device_and_dtype(**tensors: torch.Tensor) -> None:
    (first_name, first), *rest = tensors.items()
    for name, tensor in rest:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")
        if tensor.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but {first_name} has {first.dtype}")


def check_parameter_like(name: str, parameter: torch.Tensor, input_name: str, like: torch.Tensor,
                         master_parameters: bool = False) -> None:
    """A weight or bias on the device and in the dtype of the input `like`, or, with
    `master_parameters` (an op under autocast that takes them so), in float32."""
    if master_parameters and parameter.dtype == torch.float32:
        if parameter.device != like.device:
            raise ValueError(f"{name} is on {parameter.device} but {input_name} is on {like.device}")
        return
    check_same_device_and_dtype(**{input_name: like, name: parameter})


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The layout an op's output takes: channels_last for channels_last input, else NCHW
    (the C++ kernels apply the same rule, csrc/crop_concat.h)."""
    if not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
