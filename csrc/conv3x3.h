// Device-independent part of conv3x3_bias_relu: checks, and the forward and backward around the
// vendor convolution (oneDNN on the CPU, cuDNN on the GPU), run channels_last. A backend
// supplies `relu_grad_and_bias_sum(grad, out, grad_bias)`: the gradient masked by out > 0
// (a new tensor) and, into grad_bias if it is defined, its per-channel sum (in the opmath
// type: float for float, half and bfloat16), in one pass.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <array>
#include <optional>

namespace unet_fast {

// With `fp32_parameters` (the CPU kernels) a bf16/fp16 x may take float32 weight and bias: autocast's
// master parameters, used as they are, whose gradients come back in float32.
inline void check_conv3x3_args(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, bool fp32_parameters = false) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_bias_relu: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "conv3x3_bias_relu: weight must be (C_out, C_in, 3, 3), got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "conv3x3_bias_relu: weight takes ", weight.size(1),
              " input channels, x has ", x.size(1));
  TORCH_CHECK(x.size(2) >= 3 && x.size(3) >= 3,
              "conv3x3_bias_relu: x must be at least 3x3 for a valid 3x3 convolution, got ",
              x.size(2), "x", x.size(3));
  const bool master_parameters = fp32_parameters && weight.scalar_type() == at::kFloat &&
                                 (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() || master_parameters,
              "conv3x3_bias_relu: x and weight must share a dtype, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "conv3x3_bias_relu: bias must be (C_out,) = (", weight.size(0), ",)");
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), "conv3x3_bias_relu: bias must have the weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type());
  }
}

inline at::Tensor conv3x3_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  bool relu, at::MemoryFormat layout = at::MemoryFormat::ChannelsLast) {
  check_conv3x3_args(x, weight, bias);
  at::Tensor out = at::convolution(x.contiguous(layout), weight.contiguous(layout), bias, {1, 1},
                                   {0, 0}, {1, 1}, false, {0, 0}, 1);
  return relu ? out.relu_() : out;
}

// The incoming gradient, channels_last, masked by the ReLU where the forward applied one (`out`
// is its saved output), and the bias gradient (if `want_bias`) in the weight's dtype.
template <typename ReluGradAndBiasSum>
std::pair<at::Tensor, at::Tensor> masked_grad_and_bias_grad(const at::Tensor& grad_out, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& out, bool want_bias,
                                                            ReluGradAndBiasSum relu_grad_and_bias_sum) {
  constexpr auto layout = at::MemoryFormat::ChannelsLast;
  at::Tensor grad = grad_out.contiguous(layout);
  at::Tensor grad_bias;
  if (out) {
    const auto acc_type = at::toOpMathType(grad.scalar_type());
    if (want_bias) grad_bias = at::empty({weight.size(0)}, grad.options().dtype(acc_type));
    grad = relu_grad_and_bias_sum(grad, out->contiguous(layout), grad_bias);
  } else if (want_bias) {
    // In grad's own type: sums of bf16/fp16 accumulate in float, and the result is rounded to
    // the weight's type below in any case. Asking for a float result would first copy the
    // whole gradient to float (bf16, 64 x 568 x 568: 48 against 7 ms).
    grad_bias = grad.sum({0, 2, 3});
  }
  if (grad_bias.defined()) grad_bias = grad_bias.to(weight.scalar_type());
  return {grad, grad_bias};
}

// The vendor's gradients of x and of the weight (each if asked) from the masked gradient,
// computed in `memory_format`.
inline std::pair<at::Tensor, at::Tensor> vendor_conv3x3_grads(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& weight, bool data_grad,
                                                              bool weight_grad, at::MemoryFormat memory_format) {
  // x's values only matter for the weight's gradient; for x's own only its shape does.
  const auto [grad_x, grad_weight, unused] = at::convolution_backward(
      grad.contiguous(memory_format), weight_grad ? x.contiguous(memory_format) : x,
      weight.contiguous(memory_format), std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 1,
      {data_grad, weight_grad, false});
  return {grad_x, grad_weight};
}

// The weight's gradient with the weight's own strides (no copy for channels_last parameters,
// as unet_fast.UNet keeps them).
inline at::Tensor in_weight_layout(const at::Tensor& grad_weight, const at::Tensor& weight) {
  if (!grad_weight.defined() || grad_weight.strides() == weight.strides()) return grad_weight;
  return at::empty_like(weight).copy_(grad_weight);
}

// The backward of a backend whose vendor convolution computes both gradients, channels_last.
template <typename ReluGradAndBiasSum>
std::tuple<at::Tensor, at::Tensor, at::Tensor> vendor_conv3x3_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 3> output_mask,
    ReluGradAndBiasSum relu_grad_and_bias_sum) {
  const auto [grad, grad_bias] =
      masked_grad_and_bias_grad(grad_out, weight, out, output_mask[2], relu_grad_and_bias_sum);
  at::Tensor grad_x, grad_weight;
  if (output_mask[0] || output_mask[1]) {
    std::tie(grad_x, grad_weight) = vendor_conv3x3_grads(grad, x, weight, output_mask[0], output_mask[1],
                                                         at::MemoryFormat::ChannelsLast);
  }
  return {grad_x, in_weight_layout(grad_weight, weight), grad_bias};
}

}  // namespace unet_fast
