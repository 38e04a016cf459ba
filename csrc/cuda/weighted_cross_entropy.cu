// CUDA kernels of the weighted softmax cross-entropy: one thread per pixel sweeps the classes
// (coalesced across the pixels of a warp), with the per-pixel math of the CPU kernel.
#include <cmath>

#include "../common/weighted_cross_entropy.h"
#include "device_helpers.cuh"
#include "weighted_cross_entropy.cuh"

namespace unet_fast {
namespace {

template <typename acc_t>
__global__ void pixel_weights_kernel(WeightedCrossEntropyLaunch args) {
  const int64_t pixels = args.images * args.hw;
  acc_t* out = static_cast<acc_t*>(args.pixel_weight);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pixels;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t label = args.target[i];
    out[i] = label_is_valid(label, args.ignore_index, args.classes)
                 ? pixel_weight<acc_t>(label, args.ignore_index, args.weight, i, args.class_weight)
                 : acc_t(NAN);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void weighted_cross_entropy_kernel(WeightedCrossEntropyLaunch args) {
  const scalar_t* logits = static_cast<const scalar_t*>(args.logits);
  const acc_t* v_all = static_cast<const acc_t*>(args.pixel_weight);
  acc_t* loss = static_cast<acc_t*>(args.pixel_loss);
  scalar_t* grad = static_cast<scalar_t*>(args.grad);
  const acc_t inv_denominator = acc_t(1) / *static_cast<const acc_t*>(args.denominator);
  const int64_t pixels = args.images * args.hw, classes = args.classes, hw = args.hw;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pixels;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t image = i / hw, p = i % hw;
    const scalar_t* z = logits + image * classes * hw + p;
    acc_t max = -INFINITY;
    for (int64_t c = 0; c < classes; ++c) max = max_keep_nan(max, widen<acc_t>(z[c * hw]));
    acc_t sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += exp(widen<acc_t>(z[c * hw]) - max);
    const int64_t label = args.target[i];
    const acc_t v = v_all[i];
    const bool ignored = label == args.ignore_index;
    const bool in_range = 0 <= label && label < classes;
    const acc_t z_target = in_range ? widen<acc_t>(z[label * hw]) : acc_t(0);
    loss[i] = ignored ? acc_t(0) : v * ((max - z_target) + log(sum));
    if (!grad) continue;
    const acc_t inv_sum = acc_t(1) / sum, scale = ignored ? acc_t(0) : v * inv_denominator;
    scalar_t* g = grad + image * classes * hw + p;
    for (int64_t c = 0; c < classes; ++c) {
      g[c * hw] = narrow_to<scalar_t>(
          softmax_grad(exp(widen<acc_t>(z[c * hw]) - max), inv_sum,
                       c == label ? acc_t(1) : acc_t(0), scale));
    }
  }
}

}  // namespace

cudaError_t launch_pixel_weights(const WeightedCrossEntropyLaunch& args, cudaStream_t stream) {
  const unsigned grid = grid_for(args.images * args.hw);
  if (args.type == ElementType::kDouble) {
    pixel_weights_kernel<double><<<grid, kThreads, 0, stream>>>(args);
  } else {
    pixel_weights_kernel<float><<<grid, kThreads, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

cudaError_t launch_weighted_cross_entropy(const WeightedCrossEntropyLaunch& args, cudaStream_t stream) {
  const unsigned grid = grid_for(args.images * args.hw);
  switch (args.type) {
    case ElementType::kFloat:
      weighted_cross_entropy_kernel<float, float><<<grid, kThreads, 0, stream>>>(args);
      break;
    case ElementType::kDouble:
      weighted_cross_entropy_kernel<double, double><<<grid, kThreads, 0, stream>>>(args);
      break;
    case ElementType::kHalf:
      weighted_cross_entropy_kernel<__half, float><<<grid, kThreads, 0, stream>>>(args);
      break;
    case ElementType::kBFloat16:
      weighted_cross_entropy_kernel<__nv_bfloat16, float><<<grid, kThreads, 0, stream>>>(args);
      break;
  }
  return cudaGetLastError();
}

}  // namespace unet_fast
