// CUDA kernel of the conv3x3_bias_relu backward's ReLU mask, with the CPU kernel's math
// (csrc/common/relu.h) in the accumulation type. No torch headers; binding in conv3x3_launch.cpp.
#include "../common/relu.h"
#include "conv3x3.cuh"
#include "device_helpers.cuh"

namespace unet_fast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void relu_grad_kernel(const scalar_t* grad, const scalar_t* out, scalar_t* masked, int64_t n) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    masked[i] = narrow_to<scalar_t>(relu_grad(widen<acc_t>(grad[i]), widen<acc_t>(out[i])));
  }
}

template <typename scalar_t, typename acc_t>
cudaError_t launch_typed(const void* grad, const void* out, void* masked, int64_t n, cudaStream_t stream) {
  relu_grad_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(out), static_cast<scalar_t*>(masked), n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_relu_grad(const void* grad, const void* out, void* masked, int64_t n,
                             ElementType type, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (type) {
    case ElementType::kFloat: return launch_typed<float, float>(grad, out, masked, n, stream);
    case ElementType::kDouble: return launch_typed<double, double>(grad, out, masked, n, stream);
    case ElementType::kHalf: return launch_typed<__half, float>(grad, out, masked, n, stream);
    case ElementType::kBFloat16: return launch_typed<__nv_bfloat16, float>(grad, out, masked, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unet_fast
