// Winograd F(m x m, 3x3), m = 2, 4 or 6, for the valid 3x3 convolution on the CPU
// (csrc/cpu/winograd.cpp): its forward, its data gradient (the full convolution with the turned
// weights) and its weight gradient (products of transformed inputs and output gradients, summed
// over the tiles).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace unet_fast {

// Every function takes `float_gemm` for bf16 tensors computed in fp32: the transforms read and
// write bf16 but keep the transformed tiles and weights in float for float GEMMs, so the result
// is rounded to bf16 once, with no converted copies of the tensors. The weight may then be bf16
// or float32 (autocast's master weights). The forward and the data gradient take `aten_gemm`:
// their float products by ATen's GEMM even where point_products runs (the tuner measures both).

// relu(conv3x3(x, weight) + bias) (the ReLU if `relu`), channels_last, computed tile by tile
// in the Winograd domain of F(block x block, 3x3) with at most a fixed budget of transform
// buffers. x is one tensor, or several of one batch, height and width whose channels the
// convolution takes joined in order (crop_concat_conv3x3's up and skip window, never copied
// into a join).
at::Tensor winograd_conv3x3(at::TensorList x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            bool relu, int block, bool float_gemm = false, bool aten_gemm = false);

// The gradient of conv3x3(x, weight) with respect to x, given the output's gradient `grad`:
// channels_last, (N, C_in, H + 2, W + 2) for a grad of (N, C_out, H, W). With `relu_output`
// (x itself, where x is a ReLU's output), also through that ReLU's backward: zero where
// relu_output <= 0, applied as each value is written.
at::Tensor winograd_conv3x3_data_grad(const at::Tensor& grad, const at::Tensor& weight, int block,
                                      bool float_gemm = false,
                                      const std::optional<at::Tensor>& relu_output = std::nullopt,
                                      bool aten_gemm = false);

// The gradient of conv3x3(x, weight) with respect to the weight: (C_out, C_in, 3, 3),
// channels_last, in x's dtype or `result_dtype` (float32 for bf16 x with `float_gemm`: the
// gradient of float32 master weights, rounded once).
at::Tensor winograd_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x, int block,
                                        bool float_gemm = false,
                                        std::optional<at::ScalarType> result_dtype = std::nullopt);

}  // namespace unet_fast
