// CPU kernels of conv3x3_bias_relu: oneDNN convolutions (csrc/conv3x3.h) with their buffers
// from the pool, and the backward's one pass that masks the gradient by the saved output and
// sums it per channel for the bias. Channel sums are added in a fixed order of row chunks, so
// they do not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/relu.h"
#include "../conv3x3.h"
#include "buffer_pool.h"
#include "precision.h"
#include "target_clones.h"
#include "winograd.h"

namespace unet_fast {
namespace {

constexpr int64_t kChunks = 64;  // row chunks of the bias sum, independent of the thread count

template <typename T>
void relu_grad_and_bias_sum_typed(const T* grad, const T* out, T* masked,
                                  at::opmath_type<T>* grad_bias, int64_t rows, int64_t channels) {
  using acc_t = at::opmath_type<T>;
  const int64_t chunks = std::min(kChunks, std::max<int64_t>(rows, 1));
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  std::vector<acc_t> partial(grad_bias ? chunks * channels : 0, acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * rows_per_chunk, last = std::min(rows, first + rows_per_chunk);
      acc_t* sums = grad_bias ? partial.data() + chunk * channels : nullptr;
      for (int64_t r = first; r < last; ++r) {
        const T* g = grad + r * channels;
        const T* y = out + r * channels;
        T* m = masked + r * channels;
        for (int64_t c = 0; c < channels; ++c) m[c] = relu_grad(g[c], y[c]);
        if (sums) {
          for (int64_t c = 0; c < channels; ++c) sums[c] += acc_t(m[c]);
        }
      }
    }
  });
  if (!grad_bias) return;
  for (int64_t c = 0; c < channels; ++c) {
    acc_t total = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * channels + c];
    grad_bias[c] = total;
  }
}

// grad and out are channels_last, so each of the N*H*W rows holds the C channels of a pixel.
at::Tensor relu_grad_and_bias_sum_cpu(const at::Tensor& grad, const at::Tensor& out,
                                      at::Tensor& grad_bias) {
  at::Tensor masked = at::empty_like(grad);
  const int64_t channels = grad.size(1), rows = grad.numel() / std::max<int64_t>(channels, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "relu_grad_cpu", [&] {
    relu_grad_and_bias_sum_typed<scalar_t>(
        grad.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
        masked.mutable_data_ptr<scalar_t>(),
        grad_bias.defined() ? grad_bias.mutable_data_ptr<at::opmath_type<scalar_t>>() : nullptr,
        rows, channels);
  });
  return masked;
}

// oneDNN's channels_last weight gradient is fast with AVX-512; without it, it is not (on an
// AVX2 machine, 64 -> 64 at 570x570: 1.03 s channels_last, 0.36 s NCHW; 256 -> 256 at 138:
// 0.69 s, 0.26 s), while its channels_last data gradient stays the faster.
at::MemoryFormat weight_grad_layout() {
#if defined(__x86_64__)
  return cpu_has_avx512() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
#else
  return at::MemoryFormat::ChannelsLast;
#endif
}

// oneDNN's convolution with the ReLU as its post-op (torch's mkldnn::_convolution_pointwise):
// the same values as the convolution and then relu_, without the second pass over the output
// (bf16 64 -> 64 at 570: 24 against 34 ms; fp32: the same). oneDNN types only, with the bias in
// x's; elsewhere, or in a torch built without oneDNN, the convolution and relu_.
at::Tensor conv3x3_relu_fused(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view,
                               c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);
  static const auto fused = [] {
    const auto schema = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
    return schema ? std::optional(schema->typed<Signature>()) : std::nullopt;
  }();
  const auto dtype = x.scalar_type();
  const bool onednn_type = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (!fused || !onednn_type || (bias && bias->scalar_type() != dtype)) return conv3x3_forward(x, weight, bias, true);
  constexpr auto layout = at::MemoryFormat::ChannelsLast;
  return fused->call(x.contiguous(layout), weight.contiguous(layout), bias, {0, 0}, {1, 1}, {1, 1}, 1, "relu",
                     c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

// The backward's convolutions by Winograd where it pays; the data gradient is the full
// convolution of the masked gradient, from C_out to C_in channels.
struct WinogradGrads {
  at::Tensor data(const at::Tensor& grad, const at::Tensor& weight) const {
    const int block = winograd_block(WinogradPass::kDataGrad, grad.scalar_type(), grad.size(0), weight.size(0),
                                     weight.size(1), grad.size(2) + 2, grad.size(3) + 2);
    return block ? winograd_conv3x3_data_grad(grad, weight, block) : at::Tensor();
  }
  at::Tensor weight(const at::Tensor& grad, const at::Tensor& x) const {
    const int block = winograd_block(WinogradPass::kWeightGrad, grad.scalar_type(), grad.size(0), x.size(1),
                                     grad.size(1), grad.size(2), grad.size(3));
    return block ? winograd_conv3x3_weight_grad(grad, x, block) : at::Tensor();
  }
};

at::Tensor conv3x3_bias_relu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, bool relu) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_conv3x3_args(x, weight, bias);
  if (emulated_by_onednn(x.scalar_type())) {  // computed in fp32, rounded once at the end
    return conv3x3_bias_relu_cpu(x.to(at::kFloat), weight.to(at::kFloat), in_float(bias), relu).to(x.scalar_type());
  }
  if (const int block = winograd_block(WinogradPass::kForward, x.scalar_type(), x.size(0), x.size(1),
                                       weight.size(0), x.size(2) - 2, x.size(3) - 2)) {
    return winograd_conv3x3(x, weight, bias, relu, block);
  }
  return relu ? conv3x3_relu_fused(x, weight, bias) : conv3x3_forward(x, weight, bias, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_bias_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& out, std::array<bool, 3> output_mask) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  if (emulated_by_onednn(grad_out.scalar_type())) {
    const auto dtype = grad_out.scalar_type();
    auto [grad_x, grad_weight, grad_bias] = conv3x3_bias_relu_backward_cpu(
        grad_out.to(at::kFloat), x.to(at::kFloat), weight.to(at::kFloat), in_float(out), output_mask);
    return {to_dtype(grad_x, dtype), to_dtype(grad_weight, dtype), to_dtype(grad_bias, dtype)};
  }
  return conv3x3_backward_with(grad_out, x, weight, out, output_mask, relu_grad_and_bias_sum_cpu,
                               WinogradGrads{}, weight_grad_layout());
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("conv3x3_bias_relu", &conv3x3_bias_relu_cpu);
  m.impl("conv3x3_bias_relu_backward", &conv3x3_bias_relu_backward_cpu);
}

}  // namespace unet_fast
