// The valid 3x3 convolution of an input with few channels, written channels_last with its bias
// and ReLU: the U-Net's first layer, 1 -> 64. Each output pixel is 9 C_in input values times
// the taps' C_out-wide weight vectors; kPixels pixels by kLanes output channels are summed in
// registers, so the pass is bound by writing its output (64 x 570 x 570 floats, 83 MB). There
// it took 6.4 ms against oneDNN's 8.8 (NCHW, then converted to channels_last) and 19.6 (its
// channels_last kernel, built for many input channels), as the tuner measured them inside the
// 572 U-Net (2-core Emerald Rapids). With 3 or 4 channels in, oneDNN's channels_last kernel was
// faster alone (13.5 against 16.1 ms with 3); the tuner measures which, up to 4. The weight
// gradient likewise sums, per row of pixels, 9 C_in input values times each pixel's gradient
// vector, bound by reading the gradient: 7.6 ms against 15.2 for one GEMM of unfolded patches
// and 17.7 for oneDNN (measured as above).
#include "few_channels.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "dynamic_parallel.h"
#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int kPixels = 4;

// Output channels a block of accumulators takes: four 512-bit vectors (64 floats, 32 doubles).
template <typename T>
constexpr int64_t kLanes = 256 / sizeof(T);

// One output row: out[x][c] = relu(bias[c] + sum over (i, tap) of in[i][tap's row][x + tap's
// column] * taps[(i, tap)][c]), for Pixels pixels from column x0 at a time. in
// points at the row's first input row (channels in_channel_stride apart, rows in_row_stride,
// pixels in_pixel_stride); taps and bias are padded to a multiple of kLanes channels.
template <typename T, int Pixels>
UNET_FAST_CPU_CLONES void row_block(const T* in, int64_t in_channel_stride, int64_t in_row_stride,
                                    int64_t in_pixel_stride, int64_t in_channels, const T* taps, const T* bias,
                                    int64_t padded_channels, bool relu, int64_t x0, T* out,
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
    for (int p = 0; p < Pixels; ++p) {
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
                              bias_values, padded_channels, relu, x0, out_row, out_channels);
      }
      for (int64_t x0 = whole; x0 < out_w; ++x0) {
        row_block<T, 1>(in, in_channel_stride, in_row_stride, in_pixel_stride, in_channels, tap_values, bias_values,
                        padded_channels, relu, x0, out_row, out_channels);
      }
    }
  });
}

// Rows of the weight gradient's sums, independent of the thread count: the sums of each part
// are added in a fixed order, so the result does not depend on which thread did what.
constexpr int64_t kRowParts = 64;

// sums[(i, tap)][c] += sum over the row's pixels of in[i][tap's row][x + tap's column] * grad[x][c],
// for channels c0 .. c0 + `channels` (<= Lanes): nine vector sums kept in registers over the
// row, per input channel. grad's pixels lie `grad_channels` apart.
template <typename T, int64_t Lanes>
__attribute__((always_inline)) inline void row_weight_sums(const T* in, int64_t in_channel_stride,
                                                           int64_t in_row_stride, int64_t in_pixel_stride,
                                                           int64_t in_channels, const T* grad, int64_t grad_channels,
                                                           int64_t out_w, int64_t c0, int64_t channels, T* sums,
                                                           int64_t sums_stride) {
  for (int64_t i = 0; i < in_channels; ++i) {
    T sum[9][Lanes] = {};
    const T* row0 = in + i * in_channel_stride;
    const T* row1 = row0 + in_row_stride;
    const T* row2 = row1 + in_row_stride;
    for (int64_t x = 0; x < out_w; ++x) {
      const T* g = grad + x * grad_channels + c0;
      const int64_t at = x * in_pixel_stride;
      const T values[9] = {row0[at], row0[at + in_pixel_stride], row0[at + 2 * in_pixel_stride],
                           row1[at], row1[at + in_pixel_stride], row1[at + 2 * in_pixel_stride],
                           row2[at], row2[at + in_pixel_stride], row2[at + 2 * in_pixel_stride]};
#pragma omp simd
      for (int64_t l = 0; l < Lanes; ++l) {
        const T gradient = l < channels ? g[l] : T(0);
#pragma GCC unroll 9
        for (int tap = 0; tap < 9; ++tap) sum[tap][l] += values[tap] * gradient;
      }
    }
    for (int tap = 0; tap < 9; ++tap) {
      T* out = sums + (i * 9 + tap) * sums_stride + c0;
      for (int64_t l = 0; l < channels; ++l) out[l] += sum[tap][l];
    }
  }
}

// row_weight_sums over all of grad's channels, a vector of them at a time.
template <typename T, int64_t Lanes>
UNET_FAST_CPU_CLONES void row_weight_grad(const T* in, int64_t in_channel_stride, int64_t in_row_stride,
                                          int64_t in_pixel_stride, int64_t in_channels, const T* grad,
                                          int64_t grad_channels, int64_t out_w, T* sums) {
  for (int64_t c0 = 0; c0 < grad_channels; c0 += Lanes) {
    row_weight_sums<T, Lanes>(in, in_channel_stride, in_row_stride, in_pixel_stride, in_channels, grad, grad_channels,
                              out_w, c0, std::min(Lanes, grad_channels - c0), sums, grad_channels);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// row_weight_grad for float on AVX-512: 32 channels a pass, their 18 vector sums kept in
// registers (the compiler kept row_weight_sums' in memory: 43 GFLOP/s in cache).
__attribute__((target("avx512f"))) void row_weight_grad_avx512(const float* in, int64_t in_channel_stride,
                                                               int64_t in_row_stride, int64_t in_pixel_stride,
                                                               int64_t in_channels, const float* grad,
                                                               int64_t grad_channels, int64_t out_w, float* sums) {
  const auto first_lanes = [](int64_t count) { return __mmask16((1u << std::clamp<int64_t>(count, 0, 16)) - 1); };
  for (int64_t c0 = 0; c0 < grad_channels; c0 += 32) {
    const __mmask16 low = first_lanes(grad_channels - c0), high = first_lanes(grad_channels - c0 - 16);
    for (int64_t i = 0; i < in_channels; ++i) {
      __m512 sum[9][2];
      for (int tap = 0; tap < 9; ++tap) sum[tap][0] = sum[tap][1] = _mm512_setzero_ps();
      const float* rows[3] = {in + i * in_channel_stride, in + i * in_channel_stride + in_row_stride,
                              in + i * in_channel_stride + 2 * in_row_stride};
      for (int64_t x = 0; x < out_w; ++x) {
        const float* g = grad + x * grad_channels + c0;
        const __m512 g0 = _mm512_maskz_loadu_ps(low, g), g1 = _mm512_maskz_loadu_ps(high, g + 16);
        const int64_t at = x * in_pixel_stride;
#pragma GCC unroll 9
        for (int tap = 0; tap < 9; ++tap) {
          const __m512 value = _mm512_set1_ps(rows[tap / 3][at + (tap % 3) * in_pixel_stride]);
          sum[tap][0] = _mm512_fmadd_ps(value, g0, sum[tap][0]);
          sum[tap][1] = _mm512_fmadd_ps(value, g1, sum[tap][1]);
        }
      }
      for (int tap = 0; tap < 9; ++tap) {
        float* out = sums + (i * 9 + tap) * grad_channels + c0;
        _mm512_mask_storeu_ps(out, low, _mm512_add_ps(_mm512_maskz_loadu_ps(low, out), sum[tap][0]));
        _mm512_mask_storeu_ps(out + 16, high, _mm512_add_ps(_mm512_maskz_loadu_ps(high, out + 16), sum[tap][1]));
      }
    }
  }
}
#endif

template <typename T>
void few_channels_weight_grad_typed(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight) {
  constexpr int64_t lanes = 64 / sizeof(T);  // one 512-bit vector
  const int64_t in_channels = x.size(1), out_channels = grad.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const int64_t rows = grad.size(0) * out_h, parts = std::min(kRowParts, rows);
  const int64_t rows_a_part = (rows + parts - 1) / parts, taps = in_channels * 9;
  std::vector<T> part_sums(parts * taps * out_channels, T(0));
  const T* input = x.const_data_ptr<T>();
  const T* gradient = grad.const_data_ptr<T>();
  const int64_t in_image_stride = x.stride(0), in_channel_stride = x.stride(1), in_row_stride = x.stride(2),
                in_pixel_stride = x.stride(3);
  auto row_sums = &row_weight_grad<T, lanes>;
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx512()) row_sums = &row_weight_grad_avx512;
  }
#endif
  parallel_pieces(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      T* sums = part_sums.data() + part * taps * out_channels;
      for (int64_t row = part * rows_a_part; row < std::min(rows, (part + 1) * rows_a_part); ++row) {
        const int64_t image = row / out_h, y = row % out_h;
        row_sums(input + image * in_image_stride + y * in_row_stride, in_channel_stride, in_row_stride,
                 in_pixel_stride, in_channels, gradient + row * out_w * out_channels, out_channels, out_w, sums);
      }
    }
  });
  // (C_out, C_in, 3, 3) contiguous: the parts' sums added in order
  T* result = grad_weight.mutable_data_ptr<T>();
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      T total = T(0);
      for (int64_t part = 0; part < parts; ++part) total += part_sums[(part * taps + tap) * out_channels + o];
      result[o * taps + tap] = total;
    }
  }
}

}  // namespace

at::Tensor few_channels_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "conv3x3 algorithm 'few' computes float32/float64, got ", x.scalar_type());
  const at::Tensor pixels = grad.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_weight = at::empty({grad.size(1), x.size(1), 3, 3}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "few_channels_conv3x3_weight_grad",
                             [&] { few_channels_weight_grad_typed<scalar_t>(pixels, x, grad_weight); });
  return grad_weight;
}

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
