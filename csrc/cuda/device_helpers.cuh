// Device-side helpers shared by the .cu files: explicit half/bfloat16 conversions (torch builds
// with the implicit ones disabled), the size of a grid-stride launch, and the choice of walk.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/box.h"

namespace unet_fast {

constexpr int kThreads = 256;

template <typename acc_t> __device__ acc_t widen(float x) { return acc_t(x); }
template <typename acc_t> __device__ acc_t widen(double x) { return acc_t(x); }
template <typename acc_t> __device__ acc_t widen(__half x) { return acc_t(__half2float(x)); }
template <typename acc_t> __device__ acc_t widen(__nv_bfloat16 x) { return acc_t(__bfloat162float(x)); }
template <typename scalar_t> __device__ scalar_t narrow_to(float x) { return scalar_t(x); }
template <typename scalar_t> __device__ scalar_t narrow_to(double x) { return scalar_t(x); }
template <> __device__ inline __half narrow_to<__half>(float x) { return __float2half(x); }
template <> __device__ inline __nv_bfloat16 narrow_to<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// Blocks of kThreads for n grid-stride items, at least 1 and capped.
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(channels_fastest, index) for the walk over `box` in its memory order (a
// std::integral_constant<bool> and a TypeTag of int32_t where `narrow`, else of int64_t), so
// that each walk is its own kernel instance.
template <typename Launch>
cudaError_t with_walk(const Box4& box, bool narrow, Launch&& launch) {
  if (channels_fastest(box)) {
    return narrow ? launch(std::true_type(), TypeTag<int32_t>()) : launch(std::true_type(), TypeTag<int64_t>());
  }
  return narrow ? launch(std::false_type(), TypeTag<int32_t>()) : launch(std::false_type(), TypeTag<int64_t>());
}

}  // namespace unet_fast
