// Launchers of the max_pool2x2 CUDA kernels, callable without device code.
#pragma once

#include <cuda_runtime.h>

#include "../common/box.h"
#include "element_type.cuh"

namespace unet_fast {

// out = the 2x2 maxima of x; one thread per output element.
cudaError_t launch_max_pool(const void* x, const Box4& x_box, void* out, const Box4& out_box,
                            ElementType type, cudaStream_t stream);

// Writes each output's gradient into its window's first maximum of grad_x and zero into the
// window's other three elements.
cudaError_t launch_max_pool_backward(const void* grad_out, const Box4& grad_box, const void* x,
                                     const Box4& x_box, const void* out, const Box4& out_box,
                                     void* grad_x, const Box4& grad_x_box, ElementType type,
                                     cudaStream_t stream);

}  // namespace unet_fast
