// crop_concat_conv3x3 on any device that has crop_concat and conv3x3_bias_relu kernels: the
// join built for the convolution and dropped at once. The backward builds the join again only
// for the weight's gradient (one copy, a few percent of the convolution) instead of keeping it
// from forward to backward, and takes the inputs' gradients per source as two convolutions
// over the two channel ranges of the weight, so no gradient of the whole join exists either
// (at the 572 dec4 join that keeps 79 MB off a training step's peak). Written in C++ so that
// the op runs without Python: a Python custom op would also load torch._dynamo on first use.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/box.h"

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
                                 c10::string_view)>();
  return op.call(grad_out, x, weight, out, mask, data_algorithm, weight_algorithm);
}

}  // namespace crop_concat_conv_detail

inline at::Tensor crop_concat_conv3x3_composite(const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, bool relu,
                                                c10::string_view algorithm) {
  using namespace crop_concat_conv_detail;
  return conv(crop_concat(up, skip), weight, bias, relu, algorithm);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_concat_conv3x3_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 4> output_mask, c10::string_view up_algorithm,
    c10::string_view skip_algorithm, c10::string_view weight_algorithm) {
  using namespace crop_concat_conv_detail;
  at::Tensor grad_up, grad_skip, grad_weight, grad_bias;
  if (output_mask[2] || output_mask[3]) {
    std::tie(std::ignore, grad_weight, grad_bias) =
        conv_backward(grad_out, crop_concat(up, skip), weight, out, {false, output_mask[2], output_mask[3]},
                      "direct", weight_algorithm);
  }
  const int64_t up_channels = up.size(1);
  if (output_mask[0]) {
    grad_up = std::get<0>(conv_backward(grad_out, up, weight.narrow(1, 0, up_channels), out, {true, false, false},
                                        up_algorithm, "direct"));
  }
  if (output_mask[1]) {
    const int64_t h = up.size(2), w = up.size(3), height = skip.size(2), width = skip.size(3);
    const at::Tensor window =
        skip.narrow(2, center_crop_offset(height, h), h).narrow(3, center_crop_offset(width, w), w);
    const at::Tensor skip_weight = weight.narrow(1, up_channels, weight.size(1) - up_channels);
    const at::Tensor grad_window = std::get<0>(
        conv_backward(grad_out, window, skip_weight, out, {true, false, false}, skip_algorithm, "direct"));
    grad_skip = crop_concat_backward(grad_window, 0, height, width);
  }
  return {grad_up, grad_skip, grad_weight, grad_bias};
}

}  // namespace unet_fast
