// The CPU's fp32 multiply-add peak, measured: the yardstick of tools/profile_stages.py.
#pragma once

#include <vector>

namespace unet_fast {

// GFLOP/s of each of at::get_num_threads() threads running independent fp32 multiply-adds at
// once for about `seconds`: fused, at the widest vector width the kernels use here (AVX-512,
// else AVX2 with FMA), else a multiply and an add as the build's target compiles them.
std::vector<double> fma_peak_gflops(double seconds);

}  // namespace unet_fast
