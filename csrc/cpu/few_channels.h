// The direct 3x3 convolution for inputs of few channels, forward and weight gradient
// (csrc/cpu/few_channels.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), valid, channels_last; float32/float64.
at::Tensor few_channels_conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                bool relu);

// The gradient of conv3x3(x, weight) with respect to the weight, given the output's gradient
// `grad`: (C_out, C_in, 3, 3) contiguous, summed in a fixed order whatever the threads.
at::Tensor few_channels_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x);

}  // namespace unet_fast
