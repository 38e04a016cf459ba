// Per-element index math shared by the CPU and CUDA kernels (no torch headers here).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define UNET_FAST_HOST_DEVICE __host__ __device__
#else
#define UNET_FAST_HOST_DEVICE
#endif

namespace unet_fast {

// A 4-D strided view (N, C, H, W) of a buffer, in elements.
struct Box4 {
  int64_t size[4];
  int64_t stride[4];
};

UNET_FAST_HOST_DEVICE inline int64_t box_offset(const Box4& box, int64_t n, int64_t c,
                                                int64_t y, int64_t x) {
  return n * box.stride[0] + c * box.stride[1] + y * box.stride[2] + x * box.stride[3];
}

// Offset of the element with linear index `i` (N, C, H, W order) of `box`.
UNET_FAST_HOST_DEVICE inline int64_t box_offset_of_linear(const Box4& box, int64_t i) {
  const int64_t x = i % box.size[3];
  i /= box.size[3];
  const int64_t y = i % box.size[2];
  i /= box.size[2];
  const int64_t c = i % box.size[1];
  const int64_t n = i / box.size[1];
  return box_offset(box, n, c, y, x);
}

// Start of the centre crop of length `inner` in a dimension of length `outer`, rounded as
// torchvision's CenterCrop does: int(round((outer - inner) / 2.0)), Python's round being
// half-to-even (a difference of 3 starts at 2, a difference of 5 also at 2).
UNET_FAST_HOST_DEVICE inline int64_t center_crop_offset(int64_t outer, int64_t inner) {
  const int64_t diff = outer - inner;
  const int64_t half = diff / 2;
  if (diff % 2 == 0 || half % 2 == 0) return half;
  return half + 1;
}

}  // namespace unet_fast
