// Device-independent part of max_pool2x2: checks and allocation. The output and the input's
// gradient take the input's layout (channels_last or NCHW).
#pragma once

#include <ATen/ATen.h>

#include "crop_concat.h"

namespace unet_fast {

inline void check_max_pool_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "max_pool2x2: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "max_pool2x2: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "max_pool2x2: x must be at least 2x2, got ", x.size(2), "x", x.size(3));
}

inline at::Tensor new_pooled(const at::Tensor& x) {
  return at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2},
                   x.options().memory_format(output_memory_format(x)));
}

// The input's gradient, zero in the last row or column that an odd size leaves out of every
// window; the kernels write all the rest.
inline at::Tensor new_pool_input_grad(const at::Tensor& x) {
  at::Tensor grad = at::empty(x.sizes(), x.options().memory_format(output_memory_format(x)));
  if (x.size(2) % 2) grad.select(2, x.size(2) - 1).zero_();
  if (x.size(3) % 2) grad.select(3, x.size(3) - 1).zero_();
  return grad;
}

}  // namespace unet_fast
