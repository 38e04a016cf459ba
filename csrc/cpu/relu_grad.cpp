// The CPU pass of relu_grad.h: rows of channels, in chunks handed to the threads.
#include "relu_grad.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include "../common/relu.h"
#include "dynamic_parallel.h"

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
  parallel_pieces(0, chunks, 1, [&](int64_t begin, int64_t end) {
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

}  // namespace

// Each of the N*H*W rows of a channels_last tensor holds the C channels of a pixel.
at::Tensor relu_grad_and_bias_sum_cpu(const at::Tensor& grad, const at::Tensor& out, at::Tensor& grad_bias) {
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

void relu_grad_in_place(at::Tensor& grad, const at::Tensor& relu_out) {
  const at::Tensor mask = relu_out.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t channels = grad.size(1), rows = grad.numel() / std::max<int64_t>(channels, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "relu_grad_in_place", [&] {
    scalar_t* values = grad.mutable_data_ptr<scalar_t>();
    relu_grad_and_bias_sum_typed<scalar_t>(values, mask.const_data_ptr<scalar_t>(), values, nullptr, rows, channels);
  });
}

}  // namespace unet_fast
