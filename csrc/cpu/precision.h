// How the CPU kernels treat reduced precision and autocast: bf16/fp16 run in fp32 (rounded once
// at the end) where oneDNN only emulates them, and autocast stays out of the GEMMs and
// convolutions the kernels run inside.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

namespace unet_fast {

// Whether oneDNN runs convolutions and GEMMs of this reduced-precision dtype at speed on this
// CPU (torch's own check: AVX-512 or newer). Without it they are emulated: on an AVX2 CPU a bf16
// forward of 64 -> 64 at 570 took 2.2 s against 0.24 s in fp32 (Winograd), its backward 13 s
// against 0.55 s.
inline bool emulated_by_onednn(at::ScalarType dtype) {
  const auto ask_torch = [](const char* op) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(op, "").typed<bool()>().call();
  };
  static const bool bf16 = ask_torch("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = ask_torch("mkldnn::_is_mkldnn_fp16_supported");
  return (dtype == at::kBFloat16 && !bf16) || (dtype == at::kHalf && !fp16);
}

inline at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() ? t.to(dtype) : t;
}

inline std::optional<at::Tensor> to_dtype(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
  return t ? std::optional<at::Tensor>(t->to(dtype)) : std::nullopt;
}

inline std::optional<at::Tensor> in_float(const std::optional<at::Tensor>& t) { return to_dtype(t, at::kFloat); }

// Autocast has already cast the op's inputs; it must not recast the GEMMs and convolutions the
// kernels run inside. Construct with c10::autocast_dispatch_keyset.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

}  // namespace unet_fast
