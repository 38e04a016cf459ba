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

// Element-wise GPU kernels walk a box in its memory order, so that neighbouring threads touch
// neighbouring addresses: channels fastest where the box is channels_last (or a window of such
// a tensor), else columns. Their index math is 32-bit where every index fits.
inline bool channels_fastest(const Box4& box) { return box.size[1] > 1 && box.stride[1] < box.stride[3]; }

inline bool fits_int32(const Box4& box) {
  int64_t numel = 1, last = 0;
  for (int d = 0; d < 4; ++d) {
    numel *= box.size[d];
    last += (box.size[d] - 1) * box.stride[d];
  }
  return numel < (int64_t(1) << 31) && last < (int64_t(1) << 31);
}

// (n, c, y, x) of the element at position `i` of the walk over `box`.
template <bool kChannelsFastest, typename index_t>
UNET_FAST_HOST_DEVICE inline void coordinates_of_linear(const Box4& box, index_t i, index_t (&nchw)[4]) {
  const index_t channels = index_t(box.size[1]), height = index_t(box.size[2]), width = index_t(box.size[3]);
  if (kChannelsFastest) {
    nchw[1] = i % channels;
    i /= channels;
    nchw[3] = i % width;
    i /= width;
    nchw[2] = i % height;
    nchw[0] = i / height;
  } else {
    nchw[3] = i % width;
    i /= width;
    nchw[2] = i % height;
    i /= height;
    nchw[1] = i % channels;
    nchw[0] = i / channels;
  }
}

template <typename index_t>
UNET_FAST_HOST_DEVICE inline index_t offset_in(const Box4& box, const index_t (&nchw)[4]) {
  return nchw[0] * index_t(box.stride[0]) + nchw[1] * index_t(box.stride[1]) + nchw[2] * index_t(box.stride[2]) +
         nchw[3] * index_t(box.stride[3]);
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
