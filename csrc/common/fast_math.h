// Branch-free exp and log for float, so that loops over pixels vectorise on the CPU (the
// compiler will not vectorise calls into libm). About 2 ulp; NaN propagates. On the GPU the
// hardware intrinsics are used instead. Double precision uses the standard library.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "box.h"

namespace unet_fast {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) for x <= 0 (the only arguments a softmax needs once the maximum is subtracted).
UNET_FAST_HOST_DEVICE inline float exp_nonpositive(float x) {
#ifdef __CUDA_ARCH__
  return __expf(x);
#else
  // x = n ln2 + r, |r| <= ln2 / 2; exp(x) = 2^n exp(r), exp(r) by Cephes' minimax polynomial.
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t exponent = float_to_bits(shifted) - float_to_bits(kRound);
  const float value = p * bits_to_float((exponent + 127) * (1 << 23));
  // 0 below -87 (where 2^n would underflow); a bit mask rather than a branch, and NaN
  // (for which x < -87 is false) keeps its bits.
  return bits_to_float(float_to_bits(value) & -int32_t(!(x < -87.0f)));
#endif
}

// log(x) for x >= 1 (a softmax denominator once the maximum is subtracted) or NaN.
UNET_FAST_HOST_DEVICE inline float log_at_least_one(float x) {
#ifdef __CUDA_ARCH__
  return __logf(x);
#else
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)); log(x) = e ln2 + log(m), Cephes' polynomial.
  const int32_t bits = float_to_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const int32_t small = m < 0.707106781186547524f;
  e -= small;
  m = m + m * float(small) - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float ef = float(e);
  float y = p * m * z;
  y += ef * -2.12194440e-4f;
  y += -0.5f * z;
  const float result = m + y + ef * 0.693359375f;
  // NaN and +inf pass through: the polynomial would give garbage for them.
  const int32_t special = -int32_t((x != x) | (x == INFINITY));
  return bits_to_float((float_to_bits(x) & special) | (float_to_bits(result) & ~special));
#endif
}

// max(a, b) that lets a NaN in b through (NaN logits give a NaN loss, a NaN in a pooling
// window a NaN output). Bitwise `|`, not `||`: no branch, so loops over it vectorise.
template <typename T>
UNET_FAST_HOST_DEVICE inline T max_keep_nan(T a, T b) {
  return ((b > a) | (b != b)) ? b : a;
}

UNET_FAST_HOST_DEVICE inline double exp_nonpositive(double x) { return exp(x); }
UNET_FAST_HOST_DEVICE inline double log_at_least_one(double x) { return log(x); }

}  // namespace unet_fast
