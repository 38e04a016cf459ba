// Launcher of the crop_concat CUDA kernel, callable from C++ without CUDA device code.
#pragma once

#include <cuda_runtime.h>

#include "../common/box.h"

namespace unet_fast {

// Copies the strided box `src` into `dst` (same sizes), elements of `element_size` bytes.
cudaError_t launch_copy_box(void* dst, const Box4& dst_box, const void* src, const Box4& src_box,
                            int element_size, cudaStream_t stream);

}  // namespace unet_fast
