// Device-independent part of crop_concat: argument checks, output allocation and the strided
// box copies each direction needs. A backend supplies `copy_box(dst, src, top, left)`: it
// copies src into the window of dst at (top, left) in H and W and zeroes the rest of dst.
#pragma once

#include <ATen/ATen.h>

#include "common/box.h"

namespace unet_fast {

inline Box4 box_of(const at::Tensor& t) {
  Box4 box;
  for (int d = 0; d < 4; ++d) {
    box.size[d] = t.size(d);
    box.stride[d] = t.stride(d);
  }
  return box;
}

// The layout outputs take: channels_last when the input is laid out that way, else NCHW.
// unet_fast/ops/crop_concat.py applies the same rule in its fake implementation.
inline at::MemoryFormat output_memory_format(const at::Tensor& t) {
  if (!t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline void check_floating_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "crop_concat: ", name, " must be 4-D (N, C, H, W), got ", t.dim(),
              "-D");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "crop_concat: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

template <typename CopyBox>
at::Tensor crop_concat_with(const at::Tensor& up, const at::Tensor& skip, CopyBox copy_box) {
  check_floating_4d(up, "up");
  check_floating_4d(skip, "skip");
  TORCH_CHECK(up.scalar_type() == skip.scalar_type(), "crop_concat: up and skip must share a dtype, got ",
              up.scalar_type(), " and ", skip.scalar_type());
  TORCH_CHECK(up.device() == skip.device(), "crop_concat: up and skip must be on one device");
  TORCH_CHECK(up.size(0) == skip.size(0), "crop_concat: batch sizes differ: up ", up.size(0),
              ", skip ", skip.size(0));
  const int64_t h = up.size(2), w = up.size(3), H = skip.size(2), W = skip.size(3);
  TORCH_CHECK(H >= h && W >= w, "crop_concat: skip (", H, "x", W,
              ") must be at least as large as up (", h, "x", w, ")");
  const int64_t up_channels = up.size(1);
  auto out = at::empty({up.size(0), up_channels + skip.size(1), h, w},
                       up.options().memory_format(output_memory_format(up)));
  const auto window = skip.narrow(2, center_crop_offset(H, h), h).narrow(3, center_crop_offset(W, w), w);
  copy_box(out.narrow(1, 0, up_channels), up, 0, 0);
  copy_box(out.narrow(1, up_channels, skip.size(1)), window, 0, 0);
  return out;
}

template <typename CopyBox>
at::Tensor crop_concat_backward_with(const at::Tensor& grad_out, int64_t up_channels,
                                     int64_t skip_height, int64_t skip_width, CopyBox copy_box) {
  TORCH_CHECK(grad_out.dim() == 4, "crop_concat_backward: grad_out must be 4-D");
  const int64_t channels = grad_out.size(1), h = grad_out.size(2), w = grad_out.size(3);
  TORCH_CHECK(0 <= up_channels && up_channels <= channels,
              "crop_concat_backward: up_channels must be in [0, ", channels, "], got ", up_channels);
  TORCH_CHECK(skip_height >= h && skip_width >= w,
              "crop_concat_backward: the skip size must be at least the gradient's");
  const int64_t skip_channels = channels - up_channels;
  auto grad_skip = at::empty({grad_out.size(0), skip_channels, skip_height, skip_width},
                             grad_out.options().memory_format(output_memory_format(grad_out)));
  copy_box(grad_skip, grad_out.narrow(1, up_channels, skip_channels),
           center_crop_offset(skip_height, h), center_crop_offset(skip_width, w));
  return grad_skip;
}

}  // namespace unet_fast
