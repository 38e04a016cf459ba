// Loops built for AVX-512, AVX2 and baseline x86-64, chosen at load time (the extension is
// compiled for baseline x86-64 so that one build runs everywhere).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UNET_FAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UNET_FAST_CPU_CLONES
#endif
