// CPU kernels of conv3x3_bias_relu: each pass by the algorithm the caller names
// (csrc/cpu/conv_algorithm.h; unet_fast/tuning.py measures which is fastest here), with buffers
// from the pool; the backward first masks the gradient by the saved output and sums it for the
// bias in one pass (csrc/cpu/relu_grad.h).
#include <torch/library.h>

#include "../conv3x3.h"
#include "buffer_pool.h"
#include "conv_algorithm.h"
#include "few_channels.h"
#include "precision.h"
#include "relu_grad.h"
#include "winograd.h"

namespace unet_fast {
namespace {

// The weight gradient of a layer with few input channels (the U-Net's first, 1 -> 64) as one
// batched GEMM of the gradient with the unfolded input patches (9 C_in values a pixel), bound by
// reading the gradient once; the vendor's ran at a few GFLOP/s there.
at::Tensor weight_grad_by_unfolding(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight) {
  // Operands as they lie in memory (the GEMM is fast with the long K dimension unit-strided
  // in the first and rows of the second): patches (N, 9 C_in, L), gradient (N, L, C_out).
  const at::Tensor patches = at::im2col(x, {3, 3}, {1, 1}, {0, 0}, {1, 1});
  const at::Tensor pixels_by_channel = grad.permute({0, 2, 3, 1}).reshape({grad.size(0), -1, grad.size(1)});
  const at::Tensor per_image = at::bmm(patches, pixels_by_channel);  // (N, 9 C_in, C_out)
  return per_image.sum(0).t().reshape(weight.sizes());
}

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// The forward as one GEMM of the unfolded input patches with the filters, for layers of fewer
// output pixels than output channels (the deep layers of small inputs): there the weights
// outweigh the patches, and one GEMM reads them once (1024 -> 1024 on 4 x 4 output pixels:
// 12-13 ms against 17 for oneDNN and 20 for Winograd F(2x2), whose transformed weights are
// 1.8x as large; on the AVX2 EPYC). The patches take each pixel's taps in the filters' order,
// so that of the operands only the patches are copied.
at::Tensor forward_by_unfolding(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                bool relu) {
  const at::Tensor x = x_in.contiguous(kChannelsLast);
  const int64_t n = x.size(0), c_in = x.size(1), h = x.size(2) - 2, w = x.size(3) - 2, c_out = weight.size(0);
  const int64_t sn = x.stride(0), sc = x.stride(1), sy = x.stride(2), sx = x.stride(3);
  const bool taps_outer = weight.permute({0, 2, 3, 1}).is_contiguous();  // channels_last filters: (i, j, c) a row
  const at::Tensor filters = taps_outer ? weight.permute({0, 2, 3, 1}).reshape({c_out, 9 * c_in})
                                        : weight.contiguous().view({c_out, 9 * c_in});
  const at::Tensor windows = taps_outer ? x.as_strided({n, h, w, 3, 3, c_in}, {sn, sy, sx, sy, sx, sc})
                                        : x.as_strided({n, h, w, c_in, 3, 3}, {sn, sy, sx, sc, sy, sx});
  const at::Tensor patches = windows.reshape({n * h * w, 9 * c_in});
  at::Tensor out = bias ? at::addmm(*bias, patches, filters.t()) : at::mm(patches, filters.t());
  if (relu) out.relu_();
  return out.view({n, h, w, c_out}).permute({0, 3, 1, 2});  // channels_last
}

// Whether a bf16 pass computed in fp32 runs as bf16 Winograd with float GEMMs, reading and
// writing bf16 with no converted copies of the tensors.
bool winograd_in_float(const ConvAlgorithm& algorithm, at::ScalarType dtype) {
  return algorithm.in_float && algorithm.method == ConvMethod::kWinograd && dtype == at::kBFloat16;
}

at::Tensor forward_by(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, bool relu,
                      const ConvAlgorithm& algorithm) {
  if (weight.scalar_type() != x.scalar_type() && !algorithm.in_float) {  // float32 parameters, run in x's dtype
    return forward_by(x, weight.to(x.scalar_type()), to_dtype(bias, x.scalar_type()), relu, algorithm);
  }
  if (winograd_in_float(algorithm, x.scalar_type())) {
    return winograd_conv3x3(x, weight, bias, relu, algorithm.block, /*float_gemm=*/true, algorithm.aten_gemm);
  }
  if (algorithm.in_float) {
    ConvAlgorithm in_fp32 = algorithm;
    in_fp32.in_float = false;
    return forward_by(x.to(at::kFloat), weight.to(at::kFloat), in_float(bias), relu, in_fp32).to(x.scalar_type());
  }
  switch (algorithm.method) {
    case ConvMethod::kWinograd:
      return winograd_conv3x3(x, weight, bias, relu, algorithm.block, /*float_gemm=*/false, algorithm.aten_gemm);
    case ConvMethod::kNchw:
      return conv3x3_forward(x, weight, bias, relu, at::MemoryFormat::Contiguous).contiguous(kChannelsLast);
    case ConvMethod::kFew:
      return few_channels_conv3x3(x, weight, bias, relu);
    case ConvMethod::kUnfold:
      return forward_by_unfolding(x, weight, bias, relu);
    case ConvMethod::kNnpack: {
      at::Tensor out = at::_nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, {0, 0}, {1, 1});
      return (relu ? out.relu_() : out).contiguous(kChannelsLast);
    }
    default:
      return conv3x3_forward(x, weight, bias, relu);  // relu_ keeps NaN; oneDNN's ReLU post-op does not
  }
}

// The gradient of x from the masked, channels_last output gradient, as the algorithm gives it
// (a weight in another dtype only where the algorithm computes in float).
at::Tensor unmasked_data_grad_by(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                 const ConvAlgorithm& algorithm) {
  if (winograd_in_float(algorithm, grad.scalar_type())) {
    return winograd_conv3x3_data_grad(grad, weight, algorithm.block, /*float_gemm=*/true, std::nullopt,
                                      algorithm.aten_gemm);
  }
  if (algorithm.in_float) {
    ConvAlgorithm in_fp32 = algorithm;
    in_fp32.in_float = false;
    // x's values are not read for its own gradient, only its shape: no copy of them
    const at::Tensor x_shape = at::empty(x.sizes(), x.options().dtype(at::kFloat).memory_format(kChannelsLast));
    return unmasked_data_grad_by(grad.to(at::kFloat), x_shape, weight.to(at::kFloat), in_fp32).to(grad.scalar_type());
  }
  switch (algorithm.method) {
    case ConvMethod::kWinograd:
      return winograd_conv3x3_data_grad(grad, weight, algorithm.block, /*float_gemm=*/false, std::nullopt,
                                        algorithm.aten_gemm);
    case ConvMethod::kNchw:
      return vendor_conv3x3_grads(grad, x, weight, true, false, at::MemoryFormat::Contiguous)
          .first.contiguous(kChannelsLast);
    default:
      return vendor_conv3x3_grads(grad, x, weight, true, false, kChannelsLast).first;
  }
}

// The gradient of x, channels_last; with `relu_input`, also through the backward of the ReLU
// whose output x is. Winograd applies that as it writes the gradient; the others in a pass after.
at::Tensor data_grad_by(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                        const ConvAlgorithm& algorithm, bool relu_input) {
  if (weight.scalar_type() != grad.scalar_type() && !algorithm.in_float) {
    return data_grad_by(grad, x, weight.to(grad.scalar_type()), algorithm, relu_input);
  }
  if (relu_input && algorithm.method == ConvMethod::kWinograd && x.scalar_type() == grad.scalar_type() &&
      (!algorithm.in_float || winograd_in_float(algorithm, grad.scalar_type()))) {
    return winograd_conv3x3_data_grad(grad, weight, algorithm.block, /*float_gemm=*/algorithm.in_float, x,
                                      algorithm.aten_gemm);
  }
  at::Tensor grad_x = unmasked_data_grad_by(grad, x, weight, algorithm).contiguous(kChannelsLast);
  if (relu_input) relu_grad_in_place(grad_x, x);
  return grad_x;
}

// The gradient of the weight, in the weight's dtype and with its strides, from the masked
// output gradient.
at::Tensor weight_grad_by(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                          const ConvAlgorithm& algorithm) {
  if (winograd_in_float(algorithm, grad.scalar_type())) {
    return in_weight_layout(winograd_conv3x3_weight_grad(grad, x, algorithm.block, /*float_gemm=*/true,
                                                         weight.scalar_type()),
                            weight);
  }
  // The weight's values are not read for its own gradient, only its shape and strides.
  const auto shaped_like_weight = [&](at::ScalarType dtype) {
    return weight.scalar_type() == dtype ? weight : at::empty_strided(weight.sizes(), weight.strides(),
                                                                      weight.options().dtype(dtype));
  };
  if (algorithm.in_float) {
    ConvAlgorithm in_fp32 = algorithm;
    in_fp32.in_float = false;
    return weight_grad_by(grad.to(at::kFloat), x.to(at::kFloat), shaped_like_weight(at::kFloat), in_fp32)
        .to(weight.scalar_type());
  }
  if (weight.scalar_type() != grad.scalar_type()) {
    return weight_grad_by(grad, x, shaped_like_weight(grad.scalar_type()), algorithm).to(weight.scalar_type());
  }
  switch (algorithm.method) {
    case ConvMethod::kWinograd:
      return in_weight_layout(winograd_conv3x3_weight_grad(grad, x, algorithm.block), weight);
    case ConvMethod::kUnfold:
      return in_weight_layout(weight_grad_by_unfolding(grad, x, weight), weight);
    case ConvMethod::kFew:
      return in_weight_layout(few_channels_conv3x3_weight_grad(grad, x), weight);
    case ConvMethod::kNchw:
      return in_weight_layout(
          vendor_conv3x3_grads(grad, x, weight, false, true, at::MemoryFormat::Contiguous).second, weight);
    default:
      return in_weight_layout(vendor_conv3x3_grads(grad, x, weight, false, true, kChannelsLast).second, weight);
  }
}

at::Tensor conv3x3_bias_relu_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 bool relu, c10::string_view algorithm) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_conv3x3_args(x, weight, bias, /*fp32_parameters=*/true);
  return forward_by(x, weight, bias, relu, parse_conv_algorithm(algorithm, ConvPass::kForward, x.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_bias_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& out,
    std::array<bool, 3> output_mask, c10::string_view data_algorithm, c10::string_view weight_algorithm,
    bool relu_input) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = grad_out.scalar_type();
  const ConvAlgorithm for_data = parse_conv_algorithm(data_algorithm, ConvPass::kDataGrad, dtype);
  const ConvAlgorithm for_weight = parse_conv_algorithm(weight_algorithm, ConvPass::kWeightGrad, dtype);
  const auto [grad, grad_bias] =
      masked_grad_and_bias_grad(grad_out, weight, out, output_mask[2], relu_grad_and_bias_sum_cpu);
  at::Tensor grad_x, grad_weight;
  if (output_mask[0]) {
    grad_x = data_grad_by(grad, x, weight, for_data, relu_input);
  }
  if (output_mask[1]) grad_weight = weight_grad_by(grad, x, weight, for_weight);
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("conv3x3_bias_relu", &conv3x3_bias_relu_cpu);
  m.impl("conv3x3_bias_relu_backward", &conv3x3_bias_relu_backward_cpu);
}

}  // namespace unet_fast
