// Per-window math of the 2x2, stride-2 max-pool without indices, shared by the CPU and CUDA
// kernels: the backward finds the window element the gradient goes to again, from the input
// and the saved output, instead of keeping an int64 index per output.
#pragma once

#include "box.h"
#include "fast_math.h"

namespace unet_fast {

// The window's maximum, NaN if any element is NaN (as PyTorch's max_pool2d).
template <typename T>
UNET_FAST_HOST_DEVICE inline T max_of_window(T a, T b, T c, T d) {
  return max_keep_nan(max_keep_nan(max_keep_nan(a, b), c), d);
}

// Which window element (0..3, row-major) the gradient goes to: the first equal to the output,
// the first maximum as PyTorch's kernels pick it (for a NaN output: the first NaN).
template <typename T>
UNET_FAST_HOST_DEVICE inline int argmax_of_window(T a, T b, T c, T d, T out) {
  if (a == out || a != a) return 0;
  if (b == out || b != b) return 1;
  if (c == out || c != c) return 2;
  (void)d;
  return 3;
}

}  // namespace unet_fast
