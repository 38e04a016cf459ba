// The direct 3x3 convolution for inputs of few channels (csrc/cpu/few_channels.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), valid, channels_last; float32/float64.
at::Tensor few_channels_conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                bool relu);

}  // namespace unet_fast
