// Names of the CPU 3x3 convolution's algorithms (csrc/cpu/conv_algorithm.h), and which pass
// and dtype each can run.
#include "conv_algorithm.h"

#include <ATen/ATen.h>

#include <string>

namespace unet_fast {
namespace {

constexpr std::string_view kFloatPrefix = "float:";
constexpr std::string_view kAtenGemmSuffix = "-aten";

// name without `suffix` where it ends in it, else name.
std::string_view without_suffix(std::string_view name, std::string_view suffix) {
  const bool ends = name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  return ends ? name.substr(0, name.size() - suffix.size()) : name;
}

const char* pass_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::kForward:
      return "forward";
    case ConvPass::kDataGrad:
      return "data gradient";
    case ConvPass::kWeightGrad:
      return "weight gradient";
  }
  return "";
}

ConvAlgorithm parse_method(std::string_view name, ConvPass pass, at::ScalarType dtype, std::string_view full) {
  const bool reduced = dtype == at::kBFloat16 || dtype == at::kHalf;
  ConvAlgorithm algorithm;
  if (name == "direct") {
    algorithm.method = ConvMethod::kDirect;
  } else if (name == "nchw") {
    algorithm.method = ConvMethod::kNchw;
  } else if (const std::string_view winograd = without_suffix(name, kAtenGemmSuffix);
             winograd == "winograd2" || winograd == "winograd4" || winograd == "winograd6") {
    algorithm.method = ConvMethod::kWinograd;
    algorithm.block = winograd.back() - '0';
    algorithm.aten_gemm = winograd.size() != name.size();
    TORCH_CHECK(dtype != at::kHalf && (dtype != at::kBFloat16 || algorithm.block == 2),
                "conv3x3 algorithm '", full, "' does not run in ", dtype,
                (dtype == at::kBFloat16 ? " (bf16 takes winograd2, or float:winograd4/6)" : " (try float:)"));
  } else if (name == "unfold") {
    algorithm.method = ConvMethod::kUnfold;
    TORCH_CHECK(pass != ConvPass::kDataGrad && !reduced, "conv3x3 algorithm '", full,
                "' computes fp32/fp64 forwards and weight gradients only, not the ", pass_name(pass), " in ", dtype);
  } else if (name == "nnpack") {
    algorithm.method = ConvMethod::kNnpack;
    TORCH_CHECK(pass == ConvPass::kForward && dtype == at::kFloat && at::_nnpack_available(), "conv3x3 algorithm '",
                full, "' computes fp32 forwards only, where torch has NNPACK; not the ", pass_name(pass), " in ",
                dtype);
  } else if (name == "few") {
    algorithm.method = ConvMethod::kFew;
    TORCH_CHECK(pass != ConvPass::kDataGrad && !reduced, "conv3x3 algorithm '", full,
                "' computes fp32/fp64 forwards and weight gradients only, not the ", pass_name(pass), " in ", dtype);
  } else {
    TORCH_CHECK(false, "unknown conv3x3 algorithm '", full,
                "': expected direct, nchw, winograd2, winograd4, winograd6 (or winogradN-aten: the products "
                "by ATen's GEMM), unfold, nnpack, few, or float:NAME for bf16/fp16");
  }
  return algorithm;
}

}  // namespace

ConvAlgorithm parse_conv_algorithm(std::string_view name, ConvPass pass, at::ScalarType dtype) {
  if (name.substr(0, kFloatPrefix.size()) == kFloatPrefix) {
    TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "conv3x3 algorithm '", name,
                "' computes bf16/fp16 in fp32; this is ", dtype);
    ConvAlgorithm algorithm = parse_method(name.substr(kFloatPrefix.size()), pass, at::kFloat, name);
    algorithm.in_float = true;
    return algorithm;
  }
  return parse_method(name, pass, dtype, name);
}

}  // namespace unet_fast
