"""The U-Net paper's initialisation: Gaussian weights with standard deviation sqrt(2 / N), N the
number of inputs of one output unit (He et al.), so every feature map keeps roughly unit
variance through the deep stack of ReLU layers; zero biases."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def fan_in(module: nn.Conv2d | nn.ConvTranspose2d) -> int:
    """Inputs feeding one output unit. A transposed convolution whose stride equals its kernel
    (the U-Net's 2x2 up-convolution) feeds each output from one tap per input channel."""
    kernel_h, kernel_w = module.kernel_size
    if isinstance(module, nn.ConvTranspose2d):
        stride_h, stride_w = module.stride
        return module.in_channels // module.groups * math.ceil(kernel_h / stride_h) * math.ceil(kernel_w / stride_w)
    return module.in_channels // module.groups * kernel_h * kernel_w


@torch.no_grad()
def init_paper_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialises every convolution of ``model`` in place (weights ~ N(0, 2 / fan_in),
    biases 0) and returns the model."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in(module)), generator=generator)
            if module.bias is not None:
                module.bias.zero_()
    return model
