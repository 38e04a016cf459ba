// The ReLU's gradient from its saved output, shared by the CPU and CUDA kernels: the output
// is positive exactly where the input was, so no pre-activation needs keeping. Zero only
// where the output is <= 0: a NaN output passes its gradient on, as torch's threshold_backward.
#pragma once

#include "box.h"

namespace unet_fast {

template <typename T>
UNET_FAST_HOST_DEVICE inline T relu_grad(T grad, T out) {
  return out <= T(0) ? T(0) : grad;
}

}  // namespace unet_fast
