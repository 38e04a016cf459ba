// Winograd F(m x m, 3x3), m = 2, 4 or 6, for the valid 3x3 convolution on the CPU
// (csrc/cpu/winograd.cpp): its forward, its data gradient (the full convolution with the turned
// weights) and its weight gradient (products of transformed inputs and output gradients, summed
// over the tiles).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

enum class WinogradPass { kForward, kDataGrad, kWeightGrad };

// The output block m of the Winograd F(m x m, 3x3) that one pass of a 3x3 convolution of
// `images` images from c_in to c_out channels with an out_h x out_w output is best done by, or
// 0 for the direct convolution: the rule measured in docs/winograd.md, for fp32, fp64 and bf16
// (F(2x2) only; asked only where oneDNN runs bf16 natively). UNET_FAST_WINOGRAD=0 turns
// Winograd off, =2, 4 or 6 takes that block for every fp32/fp64 pass (2 also for every bf16
// one; 4 and 6 leave bf16 direct), to measure; =1 (or unset) is the rule.
// For the data gradient, the convolution is the full one from c_out to c_in channels.
int winograd_block(WinogradPass pass, at::ScalarType dtype, int64_t images, int64_t c_in, int64_t c_out,
                   int64_t out_h, int64_t out_w);

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), channels_last, computed tile by tile
// in the Winograd domain of F(block x block, 3x3) with at most a fixed budget of transform
// buffers.
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            bool relu, int block);

// The gradient of conv3x3(x, weight) with respect to x, given the output's gradient `grad`:
// channels_last, (N, C_in, H + 2, W + 2) for a grad of (N, C_out, H, W).
at::Tensor winograd_conv3x3_data_grad(const at::Tensor& grad, const at::Tensor& weight, int block);

// The gradient of conv3x3(x, weight) with respect to the weight: (C_out, C_in, 3, 3),
// channels_last.
at::Tensor winograd_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x, int block);

}  // namespace unet_fast
