// Loads and stores of values in the type a kernel computes in (float for bf16) that the compiler
// vectorizes inside a loop over channels: bf16 is read and written as its raw 16 bits (GCC
// vectorizes neither c10's conversions nor accesses through the c10::BFloat16 struct; with them
// the bf16 Winograd transforms ran 4x slower than the fp32 ones). bf16 is the upper half of a
// float; stores round to nearest even and keep NaN a NaN, bit for bit as c10 does.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace unet_fast {

template <typename T>
__attribute__((always_inline)) inline at::opmath_type<T> load_value(const T* p) {
  return at::opmath_type<T>(*p);
}

template <>
__attribute__((always_inline)) inline float load_value(const c10::BFloat16* p) {
  const uint32_t bits = uint32_t(*reinterpret_cast<const uint16_t*>(p)) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

template <typename T>
__attribute__((always_inline)) inline void store_value(T* p, at::opmath_type<T> value) {
  *p = T(value);
}

template <>
__attribute__((always_inline)) inline void store_value(c10::BFloat16* p, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  *reinterpret_cast<uint16_t*>(p) = uint16_t(nan ? 0x7FC0u : rounded);
}

}  // namespace unet_fast
