// CUDA binding of crop_concat: torch-side checks and allocation, kernel in crop_concat.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../crop_concat.h"
#include "crop_concat.cuh"

namespace unet_fast {
namespace {

// Zeroes dst outside the window (a cudaMemsetAsync-speed fill), then copies the window.
void copy_box_cuda(const at::Tensor& dst, const at::Tensor& src, int64_t top, int64_t left) {
  const c10::cuda::CUDAGuard guard(dst.device());
  at::Tensor window = dst;
  if (dst.size(2) != src.size(2) || dst.size(3) != src.size(3)) {
    dst.zero_();
    window = dst.narrow(2, top, src.size(2)).narrow(3, left, src.size(3));
  }
  const cudaError_t status =
      launch_copy_box(window.data_ptr(), box_of(window), src.data_ptr(), box_of(src),
                      int(window.element_size()), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "crop_concat: CUDA launch failed: ", cudaGetErrorString(status));
}

at::Tensor crop_concat_cuda(const at::Tensor& up, const at::Tensor& skip) {
  return crop_concat_with(up, skip, copy_box_cuda);
}

at::Tensor crop_concat_backward_cuda(const at::Tensor& grad_out, int64_t up_channels,
                                 int64_t skip_height, int64_t skip_width) {
  return crop_concat_backward_with(grad_out, up_channels, skip_height, skip_width, copy_box_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("crop_concat", &crop_concat_cuda);
  m.impl("crop_concat_backward", &crop_concat_backward_cuda);
}

}  // namespace unet_fast
