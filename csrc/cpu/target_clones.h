// Loops built for AVX-512, AVX2 and baseline x86-64, chosen at load time (the extension is
// compiled for baseline x86-64 so that one build runs everywhere), and the same question asked
// at run time where a measured choice depends on it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UNET_FAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UNET_FAST_CPU_CLONES
#endif

namespace unet_fast {

// Whether this CPU has AVX-512 (oneDNN's fp32 kernels, and ours, run about twice as wide there).
inline bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

}  // namespace unet_fast
