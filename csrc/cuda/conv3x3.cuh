// Launcher of the conv3x3_bias_relu backward's ReLU-mask kernel, callable without device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "element_type.cuh"

namespace unet_fast {

// masked[i] = out[i] <= 0 ? 0 : grad[i] over n contiguous elements of `type`.
cudaError_t launch_relu_grad(const void* grad, const void* out, void* masked, int64_t n,
                             ElementType type, cudaStream_t stream);

}  // namespace unet_fast
