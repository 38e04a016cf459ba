// The backward's first pass on the CPU: the incoming gradient through the ReLU whose saved output
// is given, and its sum per channel for the bias, in one pass over channels_last tensors.
#pragma once

#include <ATen/ATen.h>

namespace unet_fast {

// grad masked by out > 0 (a new tensor) and, into grad_bias if it is defined (in the opmath type:
// float for float, half and bfloat16), its sum over all but the channels, added in a fixed order
// of row chunks, so that it does not depend on the thread count. grad and out are channels_last.
at::Tensor relu_grad_and_bias_sum_cpu(const at::Tensor& grad, const at::Tensor& out, at::Tensor& grad_bias);

// grad masked by relu_out > 0 in place: grad is the caller's own new channels_last tensor.
void relu_grad_in_place(at::Tensor& grad, const at::Tensor& relu_out);

}  // namespace unet_fast
