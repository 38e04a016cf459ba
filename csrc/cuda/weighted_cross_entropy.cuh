// Launchers of the weighted softmax cross-entropy CUDA kernels, callable without device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "element_type.cuh"

namespace unet_fast {

struct WeightedCrossEntropyLaunch {
  const void* logits;         // (N, C, H, W) contiguous, of `type`
  const int64_t* target;      // (N, H, W) contiguous
  const float* weight;        // (N, H, W) or null
  const float* class_weight;  // (C,) or null
  void* pixel_weight;         // out (N, H, W): v, in the accumulation type
  void* pixel_loss;           // out (N, H, W): v * ce, in the accumulation type
  void* grad;                 // out (N, C, H, W) of `type`, or null
  const void* denominator;    // scalar in the accumulation type: the gradient is divided by it
  int64_t images, classes, hw, ignore_index;
  ElementType type;
};

// Fills pixel_weight. Labels out of range get NaN weights, so they are never silent.
cudaError_t launch_pixel_weights(const WeightedCrossEntropyLaunch& args, cudaStream_t stream);
// Fills pixel_loss and, if grad is set, grad; reads pixel_weight and denominator.
cudaError_t launch_weighted_cross_entropy(const WeightedCrossEntropyLaunch& args, cudaStream_t stream);

}  // namespace unet_fast
