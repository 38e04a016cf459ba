// CPU kernels of crop_concat: strided box copies, parallel over rows, memcpy where rows are
// dense, into buffers from the pool.
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../crop_concat.h"
#include "buffer_pool.h"
#include "dynamic_parallel.h"

namespace unet_fast {
namespace {

// Rows smaller than this many bytes are grouped so that each task moves a useful amount.
constexpr int64_t kBytesPerTask = 64 * 1024;

// Copies src into the window of dst at (top, left) in H and W and zeroes the rest, writing
// every element of dst once. dst is a slice of a tensor we allocated, so one of its dims (W for
// NCHW, C for channels_last) has unit stride: the rows of the parallel loop run along it.
template <typename T>
void copy_box_typed(const at::Tensor& dst, const at::Tensor& src, int64_t top, int64_t left) {
  const Box4 d = box_of(dst), s = box_of(src);
  const int64_t window_start[4] = {0, 0, top, left};
  int inner = 3;
  for (int k = 0; k < 4; ++k) {
    if (d.size[k] > 1 && d.stride[k] == 1) inner = k;
  }
  int outer[3], o = 0;
  for (int k = 0; k < 4; ++k) {
    if (k != inner) outer[o++] = k;
  }
  const int64_t row = d.size[inner];
  const int64_t rows = d.size[outer[0]] * d.size[outer[1]] * d.size[outer[2]];
  if (row == 0 || rows == 0) return;
  T* dst_ptr = dst.data_ptr<T>();
  const T* src_ptr = src.data_ptr<T>();
  const int64_t src_step = s.stride[inner], dst_step = d.stride[inner];
  const int64_t lo = window_start[inner], hi = lo + s.size[inner];
  const int64_t grain = std::max<int64_t>(1, kBytesPerTask / (row * int64_t(sizeof(T))));
  parallel_pieces(0, rows, grain, [&](int64_t begin, int64_t end) {
    int64_t idx[4] = {0, 0, 0, 0};
    for (int64_t r = begin; r < end; ++r) {
      int64_t rest = r;
      idx[outer[2]] = rest % d.size[outer[2]];
      rest /= d.size[outer[2]];
      idx[outer[1]] = rest % d.size[outer[1]];
      idx[outer[0]] = rest / d.size[outer[1]];
      T* out = dst_ptr + box_offset(d, idx[0], idx[1], idx[2], idx[3]);
      bool inside = true;
      for (int k : outer) {
        inside = inside && idx[k] >= window_start[k] && idx[k] < window_start[k] + s.size[k];
      }
      const int64_t copy_lo = inside ? lo : row, copy_hi = inside ? hi : row;
      if (dst_step == 1) {
        std::fill_n(out, copy_lo, T(0));
        std::fill_n(out + copy_hi, row - copy_hi, T(0));
      } else {
        for (int64_t i = 0; i < copy_lo; ++i) out[i * dst_step] = T(0);
        for (int64_t i = copy_hi; i < row; ++i) out[i * dst_step] = T(0);
      }
      if (copy_lo == copy_hi) continue;
      idx[inner] = 0;
      for (int k : outer) idx[k] -= window_start[k];
      const T* in = src_ptr + box_offset(s, idx[0], idx[1], idx[2], idx[3]);
      if (src_step == 1 && dst_step == 1) {
        std::memcpy(out + lo, in, (hi - lo) * sizeof(T));
      } else {
        for (int64_t i = lo; i < hi; ++i) out[i * dst_step] = in[(i - lo) * src_step];
      }
    }
  });
}

void copy_box_cpu(const at::Tensor& dst, const at::Tensor& src, int64_t top, int64_t left) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "copy_box_cpu",
                                  [&] { copy_box_typed<scalar_t>(dst, src, top, left); });
}
at::Tensor crop_concat_cpu(const at::Tensor& up, const at::Tensor& skip) {
  const PooledAllocations pooled;
  return crop_concat_with(up, skip, copy_box_cpu);
}

at::Tensor crop_concat_backward_cpu(const at::Tensor& grad_out, int64_t up_channels,
                                 int64_t skip_height, int64_t skip_width) {
  const PooledAllocations pooled;
  return crop_concat_backward_with(grad_out, up_channels, skip_height, skip_width, copy_box_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("crop_concat", &crop_concat_cpu);
  m.impl("crop_concat_backward", &crop_concat_backward_cpu);
}

}  // namespace unet_fast
