// crop_concat_conv3x3 on any device that has crop_concat and conv3x3_bias_relu kernels: the
// join built for the convolution and dropped at once. The backward never builds it: every
// gradient is taken per source, as the convolutions of up and of skip's window with their
// channel ranges of the weight, so neither the join (78 MB at the 572 dec4 join) nor its
// gradient exists during a training step's backward. Written in C++ so that the op runs
// without Python: a Python custom op would also load torch._dynamo on first use.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/box.h"
#include "conv3x3.h"

namespace unet_fast {

namespace crop_concat_conv_detail {

inline at::Tensor crop_concat(const at::Tensor& up, const at::Tensor& skip) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("unet_fast::crop_concat", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(up, skip);
}

inline at::Tensor crop_concat_backward(const at::Tensor& grad, int64_t up_channels, int64_t height, int64_t width) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("unet_fast::crop_concat_backward", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, c10::SymInt, c10::SymInt)>();
  return op.call(grad, up_channels, c10::SymInt(height), c10::SymInt(width));
}

inline at::Tensor conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       bool relu, c10::string_view algorithm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("unet_fast::conv3x3_bias_relu", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, bool, c10::string_view)>();
  return op.call(x, weight, bias, relu, algorithm);
}

// The data gradient by `data_algorithm` and the weight's by `weight_algorithm`.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& out,
    std::array<bool, 3> mask, c10::string_view data_algorithm, c10::string_view weight_algorithm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("unet_fast::conv3x3_bias_relu_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, std::array<bool, 3>, c10::string_view,
                                 c10::string_view, bool)>();
  return op.call(grad_out, x, weight, out, mask, data_algorithm, weight_algorithm, false);
}

}  // namespace crop_concat_conv_detail

inline at::Tensor crop_concat_conv3x3_composite(const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, bool relu,
                                                c10::string_view algorithm) {
  using namespace crop_concat_conv_detail;
  return conv(crop_concat(up, skip), weight, bias, relu, algorithm);
}

// Each source's part of the backward, as the convolution of that source with its channels of
// the weight: up's, and the centre window of skip's (a view, not a copy). The gradient is
// masked by the ReLU and summed for the bias once, here, by the backend's
// relu_grad_and_bias_sum (csrc/conv3x3.h), not by each part. On the CPU ATen's where() and
// its comparison took 48 of the 184 ms of this backward at the 572 U-Net's top join.
template <typename ReluGradAndBiasSum>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_concat_conv3x3_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 4> output_mask, c10::string_view up_data_algorithm,
    c10::string_view skip_data_algorithm, c10::string_view up_weight_algorithm,
    c10::string_view skip_weight_algorithm, ReluGradAndBiasSum relu_grad_and_bias_sum) {
  using namespace crop_concat_conv_detail;
  const auto [grad, grad_bias] =
      masked_grad_and_bias_grad(grad_out, weight, out, output_mask[3], relu_grad_and_bias_sum);
  const int64_t up_channels = up.size(1), skip_channels = weight.size(1) - up_channels;
  const int64_t h = up.size(2), w = up.size(3), height = skip.size(2), width = skip.size(3);
  const at::Tensor window = skip.narrow(2, center_crop_offset(height, h), h).narrow(3, center_crop_offset(width, w), w);
  const bool weight_grad = output_mask[2];
  // skip's part first: its window's gradient goes into skip's whole one (zero around it; the
  // window's own where skip is only the window) and is dropped before up's is made, so the
  // three never coexist
  at::Tensor grad_window, skip_grad_weight, grad_skip, grad_weight;
  if (output_mask[1] || weight_grad) {
    std::tie(grad_window, skip_grad_weight, std::ignore) =
        conv_backward(grad, window, weight.narrow(1, up_channels, skip_channels), std::nullopt,
                      {output_mask[1], weight_grad, false}, skip_data_algorithm, skip_weight_algorithm);
  }
  if (output_mask[1]) {
    grad_skip = height == h && width == w ? grad_window : crop_concat_backward(grad_window, 0, height, width);
  }
  grad_window.reset();
  auto [grad_up, up_grad_weight, unused] =
      conv_backward(grad, up, weight.narrow(1, 0, up_channels), std::nullopt, {output_mask[0], weight_grad, false},
                    up_data_algorithm, up_weight_algorithm);
  if (weight_grad) {
    grad_weight = at::empty_like(weight);
    grad_weight.narrow(1, 0, up_channels).copy_(up_grad_weight);
    grad_weight.narrow(1, up_channels, skip_channels).copy_(skip_grad_weight);
  }
  return {grad_up, grad_skip, grad_weight, grad_bias};
}

}  // namespace unet_fast
