// CUDA kernel of crop_concat: one thread per element of a strided box copy, walking the
// destination in its memory order (csrc/common/box.h). No torch headers, so this file compiles
// in seconds; the binding is crop_concat_launch.cpp.
#include <cuda_runtime.h>

#include "../common/box.h"
#include "crop_concat.cuh"
#include "device_helpers.cuh"

namespace unet_fast {
namespace {

template <typename T, bool kChannelsFastest, typename index_t>
__global__ void copy_box_kernel(T* dst, Box4 dst_box, const T* src, Box4 src_box, int64_t numel) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    index_t nchw[4];
    coordinates_of_linear<kChannelsFastest>(dst_box, index_t(i), nchw);
    dst[offset_in(dst_box, nchw)] = src[offset_in(src_box, nchw)];
  }
}

template <typename T>
cudaError_t launch_typed(void* dst, const Box4& dst_box, const void* src, const Box4& src_box,
                         cudaStream_t stream) {
  const int64_t numel = dst_box.size[0] * dst_box.size[1] * dst_box.size[2] * dst_box.size[3];
  if (numel == 0) return cudaSuccess;
  return with_walk(dst_box, fits_int32(dst_box) && fits_int32(src_box), [&](auto fastest, auto index) {
    using index_t = typename decltype(index)::type;
    copy_box_kernel<T, decltype(fastest)::value, index_t><<<grid_for(numel), kThreads, 0, stream>>>(
        static_cast<T*>(dst), dst_box, static_cast<const T*>(src), src_box, numel);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_copy_box(void* dst, const Box4& dst_box, const void* src, const Box4& src_box,
                            int element_size, cudaStream_t stream) {
  switch (element_size) {
    case 2: return launch_typed<uint16_t>(dst, dst_box, src, src_box, stream);
    case 4: return launch_typed<uint32_t>(dst, dst_box, src, src_box, stream);
    case 8: return launch_typed<uint64_t>(dst, dst_box, src, src_box, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace unet_fast
