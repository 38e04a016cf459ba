// The CPU's fp32 multiply-add peak, measured: the yardstick of tools/profile_stages.py.
#pragma once

#include <vector>

namespace unet_fast {

// GFLOP/s of each of at::get_num_threads() threads running independent fp32 fused multiply-adds
// at once for about `seconds`, at the widest vector width the kernels use here (AVX-512, else
// AVX2 with FMA, else scalar).
std::vector<double> fma_peak_gflops(double seconds);

}  // namespace unet_fast
