// CUDA binding of max_pool2x2: checks and allocation (csrc/max_pool.h), kernels in max_pool.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../max_pool.h"
#include "element_type.h"
#include "max_pool.cuh"

namespace unet_fast {
namespace {

void check(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "max_pool2x2: CUDA launch failed: ", cudaGetErrorString(status));
}

at::Tensor max_pool2x2_cuda(const at::Tensor& x) {
  check_max_pool_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = new_pooled(x);
  check(launch_max_pool(x.const_data_ptr(), box_of(x), out.mutable_data_ptr(), box_of(out),
                        element_type(x.scalar_type(), "max_pool2x2"), at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor max_pool2x2_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out) {
  check_max_pool_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = new_pool_input_grad(x);
  check(launch_max_pool_backward(grad_out.const_data_ptr(), box_of(grad_out), x.const_data_ptr(), box_of(x),
                                 out.const_data_ptr(), box_of(out), grad_x.mutable_data_ptr(), box_of(grad_x),
                                 element_type(x.scalar_type(), "max_pool2x2"), at::cuda::getCurrentCUDAStream()));
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("max_pool2x2", &max_pool2x2_cuda);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cuda);
}

}  // namespace unet_fast
