// Winograd F(4x4, 3x3) for the valid 3x3 convolution on the CPU (csrc/cpu/winograd.cpp): its
// forward, its data gradient (the full convolution with the turned weights) and its weight
// gradient (products of transformed inputs and output gradients, summed over the tiles).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

enum class WinogradPass { kForward, kDataGrad, kWeightGrad };

// Whether one pass of a 3x3 convolution of `images` images from c_in to c_out channels with an
// out_h x out_w output is better done by Winograd: fp32 or fp64, at least 64 channels in and
// out (16 for the weight gradient), at least 64 output blocks of 4x4 over the batch (36 for
// the weight gradient, or with 512 or more channels in and out), and not turned off by
// UNET_FAST_WINOGRAD=0. For the data
// gradient, the convolution is the full one from c_out to c_in channels.
bool winograd_pays(WinogradPass pass, at::ScalarType dtype, int64_t images, int64_t c_in, int64_t c_out,
                   int64_t out_h, int64_t out_w);

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), channels_last, computed tile by tile
// in the Winograd domain with at most a fixed budget of transform buffers.
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, bool relu);

// The gradient of conv3x3(x, weight) with respect to x, given the output's gradient `grad`:
// channels_last, (N, C_in, H + 2, W + 2) for a grad of (N, C_out, H, W).
at::Tensor winograd_conv3x3_data_grad(const at::Tensor& grad, const at::Tensor& weight);

// The gradient of conv3x3(x, weight) with respect to the weight: (C_out, C_in, 3, 3),
// channels_last.
at::Tensor winograd_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x);

}  // namespace unet_fast
