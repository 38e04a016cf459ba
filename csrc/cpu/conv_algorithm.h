// The algorithms a pass of the CPU 3x3 convolution can run by, named as unet_fast/tuning.py
// names them (it measures them on the machine at hand and passes its choice to the ops):
//   direct      oneDNN's convolution, channels_last (then relu_: oneDNN's ReLU post-op drops NaN)
//   nchw        oneDNN's convolution in NCHW, converted to and from channels_last
//   winograd2, winograd4, winograd6
//               Winograd F(m x m, 3x3) (csrc/cpu/winograd.cpp); in bf16 only winograd2. Its
//               float products by our kernel where it runs (csrc/cpu/point_gemm.h)
//   winograd2-aten, winograd4-aten, winograd6-aten
//               the same with every product by ATen's GEMM (MKL/oneDNN)
//   unfold      one GEMM of the unfolded input patches: the forward (with the filters) and the
//               weight gradient (with the gradient)
//   nnpack      NNPACK's forward (fp32, where torch has it)
//   few         our direct forward and weight gradient for inputs of few channels
//               (csrc/cpu/few_channels.cpp)
//   float:NAME  bf16/fp16 computed in fp32 by NAME and rounded once
#pragma once

#include <ATen/ATen.h>

#include <string_view>

namespace unet_fast {

enum class ConvPass { kForward, kDataGrad, kWeightGrad };
enum class ConvMethod { kDirect, kNchw, kWinograd, kUnfold, kNnpack, kFew };

struct ConvAlgorithm {
  ConvMethod method = ConvMethod::kDirect;
  int block = 0;           // the Winograd output block
  bool aten_gemm = false;  // Winograd's products by ATen's GEMM, never by point_products
  bool in_float = false;   // computed in fp32 and rounded
};

// Parses `name` for one pass in `dtype`; a name that does not exist, or cannot run that pass
// in that dtype, raises an error that says which can.
ConvAlgorithm parse_conv_algorithm(std::string_view name, ConvPass pass, at::ScalarType dtype);

}  // namespace unet_fast
