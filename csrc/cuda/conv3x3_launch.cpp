// CUDA binding of conv3x3_bias_relu: cuDNN convolutions (csrc/conv3x3.h), the ReLU mask in
// conv3x3.cu and the bias gradient as an ATen sum of the masked gradient.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../conv3x3.h"
#include "conv3x3.cuh"
#include "element_type.h"
#include "relu_grad.h"

namespace unet_fast {

at::Tensor relu_grad_and_bias_sum_cuda(const at::Tensor& grad, const at::Tensor& out, at::Tensor& grad_bias) {
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor masked = at::empty_like(grad);
  const cudaError_t status = launch_relu_grad(
      grad.const_data_ptr(), out.const_data_ptr(), masked.mutable_data_ptr(), grad.numel(),
      element_type(grad.scalar_type(), "conv3x3_bias_relu"), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "conv3x3_bias_relu: CUDA launch failed: ", cudaGetErrorString(status));
  if (grad_bias.defined()) at::sum_out(grad_bias, masked, {0, 2, 3}, false, grad_bias.scalar_type());
  return masked;
}

namespace {

// cuDNN chooses its own algorithms: the CPU's algorithm names are ignored here.
at::Tensor conv3x3_bias_relu_cuda(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, bool relu, c10::string_view) {
  const c10::cuda::CUDAGuard guard(x.device());
  return conv3x3_forward(x, weight, bias, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_bias_relu_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 3> output_mask, c10::string_view, c10::string_view,
    bool relu_input) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto [grad_x, grad_weight, grad_bias] =
      vendor_conv3x3_backward(grad_out, x, weight, out, output_mask, relu_grad_and_bias_sum_cuda);
  if (relu_input && grad_x.defined()) {
    at::Tensor no_bias;
    grad_x = relu_grad_and_bias_sum_cuda(grad_x, x.contiguous(at::MemoryFormat::ChannelsLast), no_bias);
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("conv3x3_bias_relu", &conv3x3_bias_relu_cuda);
  m.impl("conv3x3_bias_relu_backward", &conv3x3_bias_relu_backward_cuda);
}

}  // namespace unet_fast
