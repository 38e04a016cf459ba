// Winograd F(4x4, 3x3) forward of the valid 3x3 convolution on the CPU (csrc/cpu/winograd.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

// Whether the CPU forward of conv3x3_bias_relu takes the Winograd path for these operands:
// fp32 or fp64, at least 16 channels in and out, at least 64 output blocks of 4x4 (over the
// batch), and not turned off by UNET_FAST_WINOGRAD=0.
bool winograd_applies(const at::Tensor& x, const at::Tensor& weight);

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), channels_last, computed tile by tile
// in the Winograd domain with at most a fixed budget of transform buffers.
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, bool relu);

}  // namespace unet_fast
