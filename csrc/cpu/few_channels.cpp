// The valid 3x3 convolution of an input with few channels, written channels_last with its bias
// and ReLU: the U-Net's first layer, 1 -> 64. Each output pixel is 9 C_in input values times
// the taps' C_out-wide weight vectors; kPixels pixels by kLanes output channels are summed in
// registers, so the pass is bound by writing its output (64 x 570 x 570 floats, 83 MB). There
// it took 6.4 ms against oneDNN's 8.8 (NCHW, then converted to channels_last) and 19.6 (its
// channels_last kernel, built for many input channels), as the tuner measured them inside the
// 572 U-Net (2-core Emerald Rapids). With 3 or 4 channels in, oneDNN's channels_last kernel was
// faster alone (13.5 against 16.1 ms with 3); the tuner measures which, up to 4.
#include "few_channels.h"

#include <ATen/Dispatch.h>

#include <algorithm>

#include "dynamic_parallel.h"
#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int kPixels = 4;

// Output channels a block of accumulators takes: four 512-bit vectors (64 floats, 32 doubles).
template <typename T>
constexpr int64_t kLanes = 256 / sizeof(T);

// One output row: out[x][c] = relu(bias[c] + sum over (i, tap) of in[i][tap's row][x + tap's
// column] * taps[(i, tap)][c]), for `pixels` (<= Pixels) pixels from column x0 at a time. in
// points at the row's first input row (channels in_channel_stride apart, rows in_row_stride,
// pixels in_pixel_stride); taps and bias are padded to a multiple of kLanes channels.
template <typename T, int Pixels>
UNET_FAST_CPU_CLONES void row_block(const T* in, int64_t in_channel_stride, int64_t in_row_stride,
                                    int64_t in_pixel_stride, int64_t in_channels, const T* taps, const T* bias,
                                    int64_t padded_channels, bool relu, int64_t x0, int pixels, T* out,
                                    int64_t out_channels) {
  constexpr int64_t lanes = kLanes<T>;
  for (int64_t c0 = 0; c0 < padded_channels; c0 += lanes) {
    T sum[Pixels][lanes];
    for (int p = 0; p < Pixels; ++p) {
#pragma omp simd
      for (int64_t l = 0; l < lanes; ++l) sum[p][l] = bias[c0 + l];
    }
    for (int64_t i = 0; i < in_channels; ++i) {
      for (int tap = 0; tap < 9; ++tap) {
        const T* w = taps + (i * 9 + tap) * padded_channels + c0;
        const T* source = in + i * in_channel_stride + (tap / 3) * in_row_stride + (x0 + tap % 3) * in_pixel_stride;
#pragma GCC unroll 4
        for (int p = 0; p < Pixels; ++p) {
          const T value = source[p * in_pixel_stride];
#pragma omp simd
          for (int64_t l = 0; l < lanes; ++l) sum[p][l] += value * w[l];
        }
      }
    }
    const int64_t channels = std::min(lanes, out_channels - c0);
    for (int p = 0; p < pixels; ++p) {
      T* o = out + (x0 + p) * out_channels + c0;
#pragma omp simd
      for (int64_t l = 0; l < channels; ++l) o[l] = relu && sum[p][l] < T(0) ? T(0) : sum[p][l];  // keeps NaN
    }
  }
}

template <typename T>
void few_channels_typed(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias, bool relu,
                        at::Tensor& out) {
  const int64_t in_channels = x.size(1), out_channels = out.size(1), out_h = out.size(2), out_w = out.size(3);
  const int64_t padded_channels = taps.size(1);
  const T* input = x.const_data_ptr<T>();
  const T* tap_values = taps.const_data_ptr<T>();
  const T* bias_values = bias.const_data_ptr<T>();
  T* output = out.mutable_data_ptr<T>();
  const int64_t in_image_stride = x.stride(0), in_channel_stride = x.stride(1), in_row_stride = x.stride(2),
                in_pixel_stride = x.stride(3);
  // whole blocks of kPixels, then the last pixels one at a time (a block would read past the row)
  const int64_t whole = out_w / kPixels * kPixels;
  parallel_pieces(0, x.size(0) * out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / out_h, y = row % out_h;
      const T* in = input + image * in_image_stride + y * in_row_stride;
      T* out_row = output + row * out_w * out_channels;
      for (int64_t x0 = 0; x0 < whole; x0 += kPixels) {
        row_block<T, kPixels>(in, in_channel_stride, in_row_stride, in_pixel_stride, in_channels, tap_values,
                              bias_values, padded_channels, relu, x0, kPixels, out_row, out_channels);
      }
      for (int64_t x0 = whole; x0 < out_w; ++x0) {
        row_block<T, 1>(in, in_channel_stride, in_row_stride, in_pixel_stride, in_channels, tap_values, bias_values,
                        padded_channels, relu, x0, 1, out_row, out_channels);
      }
    }
  });
}

}  // namespace

at::Tensor few_channels_conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                bool relu) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "conv3x3 algorithm 'few' computes float32/float64, got ", x.scalar_type());
  const int64_t out_channels = weight.size(0), in_channels = weight.size(1);
  const int64_t lanes = x.scalar_type() == at::kFloat ? kLanes<float> : kLanes<double>;
  const int64_t padded = (out_channels + lanes - 1) / lanes * lanes;
  // (C_in * 9, C_out) taps and the bias, zero-padded to whole blocks of lanes
  at::Tensor taps = at::zeros({in_channels * 9, padded}, weight.options());
  taps.narrow(1, 0, out_channels).copy_(weight.permute({1, 2, 3, 0}).reshape({in_channels * 9, out_channels}));
  at::Tensor bias_values = at::zeros({padded}, weight.options());
  if (bias) bias_values.narrow(0, 0, out_channels).copy_(*bias);
  at::Tensor out = at::empty({x.size(0), out_channels, x.size(2) - 2, x.size(3) - 2},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "few_channels_conv3x3",
                             [&] { few_channels_typed<scalar_t>(x, taps, bias_values, relu, out); });
  return out;
}

}  // namespace unet_fast
