// Per-pixel math of the pixel-weighted softmax cross-entropy, shared by the CPU and CUDA
// kernels:  ce(x) = logsumexp_c z_c(x) - z_t(x),  v(x) = weight(x) * class_weight[t(x)]
// (0 for ignored pixels),  loss(x) = v(x) ce(x),  dloss/dz_c = (softmax_c - [c == t]) v(x).
#pragma once

#include <cstdint>

#include "box.h"
#include "fast_math.h"

namespace unet_fast {

enum class Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

// A pixel's total weight v in precision T; `weight` and `class_weight` may be null (factor 1).
template <typename T>
UNET_FAST_HOST_DEVICE inline T pixel_weight(int64_t label, int64_t ignore_index, const float* weight,
                                            int64_t pixel, const float* class_weight) {
  if (label == ignore_index) return T(0);
  const T own = weight ? T(weight[pixel]) : T(1);
  return class_weight ? own * T(class_weight[label]) : own;
}

// Bitwise `|` and `&`, not `||` and `&&`: no branch, so the CPU's label loops vectorise.
UNET_FAST_HOST_DEVICE inline bool label_is_valid(int64_t label, int64_t ignore_index,
                                                 int64_t classes) {
  return (label == ignore_index) | ((0 <= label) & (label < classes));
}

// Gradient entry for class c: (softmax_c - [c == t]) * scale, given exp(z_c - max), the
// reciprocal of sum_c exp(z_c - max) and the one-hot value [c == t] (1 or 0; a number rather
// than a bool, whose conversion stops the CPU loops from vectorising).
template <typename T>
UNET_FAST_HOST_DEVICE inline T softmax_grad(T exp_shifted, T inv_sum, T one_hot, T scale) {
  return (exp_shifted * inv_sum - one_hot) * scale;
}

}  // namespace unet_fast
