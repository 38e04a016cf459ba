// CUDA registration of crop_concat_conv3x3: the composite of csrc/crop_concat_conv.h over the
// CUDA kernels of crop_concat and conv3x3_bias_relu.
#include <torch/library.h>

#include "../crop_concat_conv.h"
#include "relu_grad.h"

namespace unet_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_concat_conv3x3_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 4> output_mask, c10::string_view up_data_algorithm,
    c10::string_view skip_data_algorithm, c10::string_view up_weight_algorithm,
    c10::string_view skip_weight_algorithm) {
  return crop_concat_conv3x3_backward_composite(grad_out, up, skip, weight, out, output_mask, up_data_algorithm,
                                                skip_data_algorithm, up_weight_algorithm, skip_weight_algorithm,
                                                relu_grad_and_bias_sum_cuda);
}

}  // namespace
}  // namespace unet_fast

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("crop_concat_conv3x3", &unet_fast::crop_concat_conv3x3_composite);
  m.impl("crop_concat_conv3x3_backward", &unet_fast::crop_concat_conv3x3_backward_cuda);
}
