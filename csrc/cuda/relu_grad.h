// The CUDA backward's first pass (csrc/cuda/conv3x3_launch.cpp): the incoming gradient through
// the ReLU whose saved output is given, and its sum per channel for the bias.
#pragma once

#include <ATen/ATen.h>

namespace unet_fast {

// grad masked by out > 0 (a new tensor) and, into grad_bias if it is defined, its sum over all
// but the channels.
at::Tensor relu_grad_and_bias_sum_cuda(const at::Tensor& grad, const at::Tensor& out, at::Tensor& grad_bias);

}  // namespace unet_fast
