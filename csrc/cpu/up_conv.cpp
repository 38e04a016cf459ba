// CPU kernels of up_conv2x2, the decoder's 2x2 stride-2 transposed convolution. Its windows do
// not overlap: each input pixel's channels times a (C_in, 2*2*C_out) matrix of taps give the
// four output pixels it covers. So the convolution is a GEMM over the pixels (by pieces that
// stay in cache), its rows scattered with the bias into the output; the backward gathers the
// output's gradient into that GEMM's layout once and takes both gradients as GEMMs. ATen's
// transposed convolution runs its backward at a fraction of the GEMM rate (the U-Net's four at
// 572: 0.54 s).
#include <ATen/OpMathType.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "buffer_pool.h"
#include "dynamic_parallel.h"
#include "precision.h"

namespace unet_fast {
namespace {

constexpr int64_t kRowsPerTask = 4;
constexpr int64_t kPieceProductsBytes = 256 * 1024;  // a piece's products: within a core's L2
constexpr int64_t kMinPiecePixels = 256;             // rows of a piece's GEMM: enough to amortize packing the taps

void check_up_conv_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, "up_conv2x2: x must be 4-D (N, C_in, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 2 && weight.size(3) == 2,
              "up_conv2x2: weight must be (C_in, C_out, 2, 2), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1), "up_conv2x2: weight takes ", weight.size(0),
              " input channels but x has ", x.size(1));
  // or float32 weight and bias for bf16/fp16 x: autocast's master parameters, used as they are
  const bool master_parameters =
      weight.scalar_type() == at::kFloat && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && (weight.scalar_type() == x.scalar_type() || master_parameters),
              "up_conv2x2: x and weight must share one floating-point dtype, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(1) &&
                        bias->scalar_type() == weight.scalar_type()),
              "up_conv2x2: bias must be (C_out,) = (", weight.size(1), ",) in the weight's dtype");
}

// x as a (pixels, C_in) matrix: a view when x is channels_last.
at::Tensor pixel_rows(const at::Tensor& x) {
  return x.contiguous(at::MemoryFormat::ChannelsLast)
      .permute({0, 2, 3, 1})
      .reshape({x.size(0) * x.size(2) * x.size(3), x.size(1)});
}

// The weight as (C_in, [dy, dx, C_out]): a view when the weight is channels_last.
at::Tensor taps_of(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).reshape({weight.size(0), 4 * weight.size(1)});
}

// Calls fn(products offset, output offset) for every run of 2 * C_out values from the input
// rows first .. end - 1 (row = n * h + i): the output pixels (2i+dy, 2j) and (2i+dy, 2j+1)
// that input pixel (n, i, j) feeds. The products hold [dy, dx, C_out] per input pixel, from
// row `first` on; the output is channels_last.
template <typename Fn>
void for_each_output_run_of_rows(int64_t first, int64_t end, int64_t h, int64_t w, int64_t c_out, Fn fn) {
  for (int64_t row = first; row < end; ++row) {
    for (int64_t dy = 0; dy < 2; ++dy) {
      const int64_t out_row = ((row / h) * 2 * h + 2 * (row % h) + dy) * 2 * w;
      for (int64_t j = 0; j < w; ++j) {
        fn(((row - first) * w + j) * 4 * c_out + dy * 2 * c_out, (out_row + 2 * j) * c_out);
      }
    }
  }
}

// The output rows that input rows first .. end - 1 feed, from their products, with the bias.
template <typename T>
void scatter_with_bias(const T* products, const T* bias, T* out, int64_t first, int64_t end, int64_t h, int64_t w,
                       int64_t c_out) {
  const int64_t run = 2 * c_out;
  for_each_output_run_of_rows(first, end, h, w, c_out, [&](int64_t from, int64_t to) {
    const T* s = products + from;
    T* d = out + to;
    if (!bias) {
      std::memcpy(d, s, run * sizeof(T));
      return;
    }
    for (int64_t c = 0; c < c_out; ++c) d[c] = s[c] + bias[c];
    for (int64_t c = 0; c < c_out; ++c) d[c_out + c] = s[c_out + c] + bias[c];
  });
}

// Input rows a piece: its products within a core's L2, its GEMM at least kMinPiecePixels rows;
// or all rows, one GEMM on all cores, where the pieces would be too few for the threads to finish
// together (the deepest up-convolution, 28 rows of 28 pixels by 2048 columns, makes three).
int64_t rows_per_piece(int64_t rows, int64_t w, int64_t c_out, int64_t element_size) {
  const int64_t by_cache = kPieceProductsBytes / (element_size * w * 4 * c_out);
  const int64_t per_piece = std::max<int64_t>({1, by_cache, (kMinPiecePixels + w - 1) / w});
  return (rows + per_piece - 1) / per_piece >= 4 * at::get_num_threads() ? per_piece : rows;
}

// The output from pixels (pixels, C_in) @ taps (C_in, [dy, dx, C_out]) and the bias. By pieces of
// whole input rows, each GEMM on one core and scattered while its products are in that core's
// cache: one GEMM over all pixels writes them to memory (zeroed first, as ATen's GEMM does) and
// the scatter reads them back, 39 MB at the U-Net's last up-convolution (1.4x slower alone).
template <typename T>
void products_scattered(const at::Tensor& pixels, const at::Tensor& taps, const T* bias, at::Tensor& out, int64_t h,
                        int64_t w) {
  const int64_t c_out = out.size(1), rows = out.size(0) * h;
  const int64_t per_piece = rows_per_piece(rows, w, c_out, sizeof(T));
  T* dst = out.mutable_data_ptr<T>();
  if (per_piece == rows) {
    const at::Tensor products = at::mm(pixels, taps);
    const T* src = products.const_data_ptr<T>();
    parallel_pieces(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      scatter_with_bias<T>(src + begin * w * 4 * c_out, bias, dst, begin, end, h, w, c_out);
    });
    return;
  }
  const int64_t pieces = (rows + per_piece - 1) / per_piece, threads = worker_threads(pieces);
  at::Tensor products = at::empty({threads, per_piece * w, 4 * c_out}, pixels.options());
  for_each_piece(pieces, threads, [&](int64_t thread) {
    return [&, thread](int64_t piece) {
      const int64_t first = piece * per_piece, count = std::min(per_piece, rows - first);
      at::Tensor part = products[thread].narrow(0, 0, count * w);
      {
        // named for the profiler: the GEMMs of a parallel region run on one core (tools/profile_stages.py)
        RECORD_FUNCTION("unet_fast::up_conv_pieces", std::vector<c10::IValue>());
        at::mm_out(part, pixels.narrow(0, first * w, count * w), taps);
      }
      scatter_with_bias<T>(part.const_data_ptr<T>(), bias, dst, first, first + count, h, w, c_out);
    };
  });
}

at::Tensor up_conv2x2_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_up_conv_args(x, weight, bias);
  if (emulated_by_onednn(x.scalar_type())) {  // computed in fp32, rounded once at the end
    return up_conv2x2_cpu(x.to(at::kFloat), weight.to(at::kFloat), in_float(bias)).to(x.scalar_type());
  }
  if (weight.scalar_type() != x.scalar_type()) {  // float32 parameters, run in x's dtype
    return up_conv2x2_cpu(x, weight.to(x.scalar_type()), to_dtype(bias, x.scalar_type()));
  }
  const int64_t h = x.size(2), w = x.size(3);
  at::Tensor out = at::empty({x.size(0), weight.size(1), 2 * h, 2 * w},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const at::Tensor bias_values = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "up_conv2x2_cpu", [&] {
    // detached: the worker threads run ATen with grad mode on, and the weight requires grad
    products_scattered<scalar_t>(pixel_rows(x).detach(), taps_of(weight).detach(),
                                 bias ? bias_values.const_data_ptr<scalar_t>() : nullptr, out, h, w);
  });
  return out;
}

// The output's gradient in the forward GEMM's layout: (pixels of x, [dy, dx, C_out]).
at::Tensor gather_grad(const at::Tensor& grad_out, int64_t h, int64_t w) {
  const at::Tensor grad = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_out = grad.size(1);
  at::Tensor gathered = at::empty({grad.size(0) * h * w, 4 * c_out}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "up_conv2x2_gather", [&] {
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = gathered.mutable_data_ptr<scalar_t>();
    parallel_pieces(0, grad.size(0) * h, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for_each_output_run_of_rows(begin, end, h, w, c_out, [&](int64_t to, int64_t from) {
        std::memcpy(dst + begin * w * 4 * c_out + to, src + from, 2 * c_out * sizeof(scalar_t));
      });
    });
  });
  return gathered;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> up_conv2x2_backward_cpu(const at::Tensor& grad_out,
                                                                       const at::Tensor& x,
                                                                       const at::Tensor& weight,
                                                                       std::array<bool, 3> output_mask) {
  const PooledAllocations pooled;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_up_conv_args(x, weight, std::nullopt);
  const int64_t n = x.size(0), c_in = x.size(1), h = x.size(2), w = x.size(3), c_out = weight.size(1);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == n && grad_out.size(1) == c_out &&
                  grad_out.size(2) == 2 * h && grad_out.size(3) == 2 * w,
              "up_conv2x2_backward: grad_out must be (", n, ", ", c_out, ", ", 2 * h, ", ", 2 * w, "), got ",
              grad_out.sizes());
  const auto dtype = x.scalar_type(), parameter_dtype = weight.scalar_type();
  if (emulated_by_onednn(dtype) || parameter_dtype != dtype) {  // in fp32, or in x's dtype
    const auto compute = emulated_by_onednn(dtype) ? at::kFloat : dtype;
    auto [grad_x, grad_weight, grad_bias] =
        up_conv2x2_backward_cpu(grad_out.to(compute), x.to(compute), weight.to(compute), output_mask);
    return {to_dtype(grad_x, dtype), to_dtype(grad_weight, parameter_dtype), to_dtype(grad_bias, parameter_dtype)};
  }
  const at::Tensor grad = gather_grad(grad_out.to(dtype), h, w);
  at::Tensor grad_x, grad_weight, grad_bias;
  if (output_mask[0]) {
    grad_x = at::mm(grad, taps_of(weight).t()).view({n, h, w, c_in}).permute({0, 3, 1, 2});
  }
  if (output_mask[1]) {  // laid out as the taps: channels_last, like the UNet's weights
    grad_weight = at::mm(pixel_rows(x).t(), grad).view({c_in, 2, 2, c_out}).permute({0, 3, 1, 2});
  }
  if (output_mask[2]) {
    grad_bias = grad.sum(0, false, at::toOpMathType(dtype)).view({4, c_out}).sum(0).to(dtype);
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("up_conv2x2", &up_conv2x2_cpu);
  m.impl("up_conv2x2_backward", &up_conv2x2_backward_cpu);
}

}  // namespace unet_fast
