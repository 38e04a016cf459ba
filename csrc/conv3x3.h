// Device-independent part of conv3x3_bias_relu: checks, and the forward and backward around the
// vendor convolution (oneDNN on the CPU, cuDNN on the GPU), both run channels_last. A backend
// supplies `relu_grad_and_bias_sum(grad, out, grad_bias)`: the gradient masked by out > 0
// (a new tensor) and, into grad_bias if it is defined, its per-channel sum (in the opmath
// type: float for float, half and bfloat16), in one pass.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <array>
#include <optional>

namespace unet_fast {

inline void check_conv3x3_args(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_bias_relu: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "conv3x3_bias_relu: weight must be (C_out, C_in, 3, 3), got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "conv3x3_bias_relu: weight takes ", weight.size(1),
              " input channels, x has ", x.size(1));
  TORCH_CHECK(x.size(2) >= 3 && x.size(3) >= 3,
              "conv3x3_bias_relu: x must be at least 3x3 for a valid 3x3 convolution, got ",
              x.size(2), "x", x.size(3));
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "conv3x3_bias_relu: x and weight must share a dtype");
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "conv3x3_bias_relu: bias must be (C_out,) = (", weight.size(0), ",)");
  }
}

inline at::Tensor conv3x3_forward(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, bool relu) {
  check_conv3x3_args(x, weight, bias);
  constexpr auto layout = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::convolution(x.contiguous(layout), weight.contiguous(layout), bias, {1, 1},
                                   {0, 0}, {1, 1}, false, {0, 0}, 1);
  return relu ? out.relu_() : out;
}

// The vendor weight gradient of a layer with few input channels (the U-Net's first, 1 -> 64)
// runs at a few GFLOP/s; as one batched GEMM of the gradient with the unfolded input patches
// (9 C_in values a pixel) it is bound by reading the gradient once. Float types only: the
// reduced-precision GEMM would also round the batch sum.
inline bool weight_grad_by_unfolding_pays(const at::Tensor& x) {
  constexpr int64_t kMaxInputChannels = 4;
  return x.size(1) <= kMaxInputChannels &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

inline at::Tensor weight_grad_by_unfolding(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& weight) {
  // Operands as they lie in memory (the GEMM is fast with the long K dimension unit-strided
  // in the first and rows of the second): patches (N, 9 C_in, L), gradient (N, L, C_out).
  const at::Tensor patches = at::im2col(x, {3, 3}, {1, 1}, {0, 0}, {1, 1});
  const at::Tensor pixels_by_channel = grad.permute({0, 2, 3, 1}).reshape({grad.size(0), -1, grad.size(1)});
  const at::Tensor per_image = at::bmm(patches, pixels_by_channel);  // (N, 9 C_in, C_out)
  return per_image.sum(0).t().reshape(weight.sizes());
}

// The gradients of a backend that has no faster ones of its own than the vendor's.
struct VendorConvGrads {
  at::Tensor data(const at::Tensor&, const at::Tensor&) const { return {}; }
  at::Tensor weight(const at::Tensor&, const at::Tensor&) const { return {}; }
};

// The vendor's weight gradient runs in `weight_grad_layout`; the data gradient, the ReLU mask
// and the bias sum always run channels_last. A backend computes a gradient itself where
// `own_grads.data(masked_grad, weight)` or `own_grads.weight(masked_grad, x)` returns a
// defined tensor; the vendor computes the rest.
template <typename ReluGradAndBiasSum, typename OwnGrads>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward_with(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 3> output_mask,
    ReluGradAndBiasSum relu_grad_and_bias_sum, const OwnGrads& own_grads,
    at::MemoryFormat weight_grad_layout = at::MemoryFormat::ChannelsLast) {
  constexpr auto layout = at::MemoryFormat::ChannelsLast;
  at::Tensor grad = grad_out.contiguous(layout);
  at::Tensor grad_bias;
  if (out) {
    const auto acc_type = at::toOpMathType(grad.scalar_type());
    if (output_mask[2]) grad_bias = at::empty({weight.size(0)}, grad.options().dtype(acc_type));
    grad = relu_grad_and_bias_sum(grad, out->contiguous(layout), grad_bias);
  } else if (output_mask[2]) {
    // In grad's own type: sums of bf16/fp16 accumulate in float, and the result is rounded to
    // the weight's type below in any case. Asking for a float result would first copy the
    // whole gradient to float (bf16, 64 x 568 x 568: 48 against 7 ms).
    grad_bias = grad.sum({0, 2, 3});
  }
  if (grad_bias.defined()) grad_bias = grad_bias.to(weight.scalar_type());
  at::Tensor grad_x, grad_weight;
  if (output_mask[0]) grad_x = own_grads.data(grad, weight);
  const bool unfold = output_mask[1] && weight_grad_by_unfolding_pays(x);
  if (output_mask[1] && !unfold) grad_weight = own_grads.weight(grad, x);
  const bool vendor_data_grad = output_mask[0] && !grad_x.defined();
  const bool vendor_weight_grad = output_mask[1] && !unfold && !grad_weight.defined();
  const auto vendor = [&](const at::Tensor& g, const at::Tensor& input, at::MemoryFormat memory_format,
                          bool data_grad, bool weight_grad) {
    // x's values only matter for the weight's gradient; for x's own only its shape does.
    return at::convolution_backward(g, weight_grad ? input.contiguous(memory_format) : input,
                                    weight.contiguous(memory_format), std::nullopt, {1, 1}, {0, 0}, {1, 1},
                                    false, {0, 0}, 1, {data_grad, weight_grad, false});
  };
  if (weight_grad_layout == layout) {
    if (vendor_data_grad || vendor_weight_grad) {
      at::Tensor vendor_grad_x, vendor_grad_weight;
      std::tie(vendor_grad_x, vendor_grad_weight, std::ignore) =
          vendor(grad, x, layout, vendor_data_grad, vendor_weight_grad);
      if (vendor_data_grad) grad_x = vendor_grad_x;
      if (vendor_weight_grad) grad_weight = vendor_grad_weight;
    }
  } else {
    if (vendor_data_grad) grad_x = std::get<0>(vendor(grad, x, layout, true, false));
    if (vendor_weight_grad) {
      grad_weight = std::get<1>(vendor(grad.contiguous(weight_grad_layout), x, weight_grad_layout, false, true));
    }
  }
  if (unfold) grad_weight = weight_grad_by_unfolding(grad, x, weight);
  // The weight's gradient with the weight's own strides (no copy for channels_last
  // parameters, as unet_fast.UNet keeps them); x's stays channels_last.
  if (grad_weight.defined() && grad_weight.strides() != weight.strides()) {
    grad_weight = at::empty_like(weight).copy_(grad_weight);
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace unet_fast
