// CPU kernels of crop_concat_conv3x3. The forward by Winograd reads up and skip's centre window
// where they lie (their channels joined in the input transform), so the join is never built;
// by any other algorithm, and for arguments it would refuse, the forward is the composite of
// csrc/crop_concat_conv.h (crop_concat, then conv3x3_bias_relu, which raise the errors). The
// backward is the composite's, with the CPU's mask and bias pass: it never builds the join either.
#include <torch/library.h>

#include "../crop_concat_conv.h"
#include "buffer_pool.h"
#include "conv_algorithm.h"
#include "precision.h"
#include "relu_grad.h"
#include "winograd.h"

namespace unet_fast {
namespace {

// Whether the forward can run by Winograd straight from up and skip: an fp32/fp64 Winograd
// algorithm, and arguments the composite would accept.
bool joins_in_winograd(const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, c10::string_view algorithm) {
  const auto dtype = up.scalar_type();
  if (algorithm.substr(0, 8) != "winograd" || (dtype != at::kFloat && dtype != at::kDouble)) return false;
  if (up.dim() != 4 || skip.dim() != 4 || weight.dim() != 4 || skip.scalar_type() != dtype ||
      weight.scalar_type() != dtype || (bias && (bias->dim() != 1 || bias->scalar_type() != dtype))) {
    return false;
  }
  return up.size(0) == skip.size(0) && skip.size(2) >= up.size(2) && skip.size(3) >= up.size(3) &&
         up.size(2) >= 3 && up.size(3) >= 3 && weight.size(1) == up.size(1) + skip.size(1) && weight.size(2) == 3 &&
         weight.size(3) == 3 && (!bias || bias->size(0) == weight.size(0));
}

at::Tensor crop_concat_conv3x3_cpu(const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, bool relu, c10::string_view algorithm) {
  if (!joins_in_winograd(up, skip, weight, bias, algorithm)) {
    return crop_concat_conv3x3_composite(up, skip, weight, bias, relu, algorithm);
  }
  const ConvAlgorithm parsed = parse_conv_algorithm(algorithm, ConvPass::kForward, up.scalar_type());
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const int64_t h = up.size(2), w = up.size(3);
  const at::Tensor window =
      skip.narrow(2, center_crop_offset(skip.size(2), h), h).narrow(3, center_crop_offset(skip.size(3), w), w);
  return winograd_conv3x3({up, window}, weight, bias, relu, parsed.block, /*float_gemm=*/false, parsed.aten_gemm);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_concat_conv3x3_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& up, const at::Tensor& skip, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 4> output_mask, c10::string_view up_data_algorithm,
    c10::string_view skip_data_algorithm, c10::string_view up_weight_algorithm,
    c10::string_view skip_weight_algorithm) {
  const PooledAllocations pooled;
  return crop_concat_conv3x3_backward_composite(grad_out, up, skip, weight, out, output_mask, up_data_algorithm,
                                                skip_data_algorithm, up_weight_algorithm, skip_weight_algorithm,
                                                relu_grad_and_bias_sum_cpu);
}

}  // namespace
}  // namespace unet_fast

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("crop_concat_conv3x3", &unet_fast::crop_concat_conv3x3_cpu);
  m.impl("crop_concat_conv3x3_backward", &unet_fast::crop_concat_conv3x3_backward_cpu);
}
