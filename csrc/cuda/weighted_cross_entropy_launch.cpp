// CUDA binding of the weighted softmax cross-entropy: checks, allocation and the reductions
// (ATen sums of the per-pixel buffers); the kernels are in weighted_cross_entropy.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../weighted_cross_entropy.h"
#include "element_type.h"
#include "weighted_cross_entropy.cuh"

namespace unet_fast {
namespace {

void check(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "weighted_softmax_cross_entropy: CUDA launch failed: ",
              cudaGetErrorString(status));
}

std::tuple<at::Tensor, at::Tensor> weighted_softmax_cross_entropy_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& class_weight_in,
    int64_t ignore_index, c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto [logits, target, weight, class_weight] = prepare_weighted_cross_entropy_inputs(
      logits_in, target_in, weight_in, class_weight_in, at::kLong);
  auto [loss, grad] = allocate_weighted_cross_entropy_outputs(logits, reduction, compute_grad);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto pixel_options = logits.options().dtype(acc);
  at::Tensor pixel_weight = at::empty(target.sizes(), pixel_options);
  at::Tensor pixel_loss = at::empty(target.sizes(), pixel_options);

  WeightedCrossEntropyLaunch args{};
  args.logits = logits.const_data_ptr();
  args.target = target.const_data_ptr<int64_t>();
  args.weight = weight.defined() ? weight.const_data_ptr<float>() : nullptr;
  args.class_weight = class_weight.defined() ? class_weight.const_data_ptr<float>() : nullptr;
  args.pixel_weight = pixel_weight.mutable_data_ptr();
  args.pixel_loss = pixel_loss.mutable_data_ptr();
  args.grad = compute_grad ? grad.mutable_data_ptr() : nullptr;
  args.images = logits.size(0);
  args.classes = logits.size(1);
  args.hw = logits.size(2) * logits.size(3);
  args.ignore_index = ignore_index;
  args.type = element_type(logits.scalar_type(), "weighted_softmax_cross_entropy");
  const auto stream = at::cuda::getCurrentCUDAStream();
  check(launch_pixel_weights(args, stream));
  const at::Tensor denominator =
      reduction == Reduction::kMean ? pixel_weight.sum() : at::ones({}, pixel_options);
  args.denominator = denominator.const_data_ptr();
  check(launch_weighted_cross_entropy(args, stream));
  if (reduction == Reduction::kNone) {
    loss.copy_(pixel_loss);
  } else {
    const at::Tensor total = pixel_loss.sum();
    loss.copy_(reduction == Reduction::kMean ? total / denominator : total);
  }
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("weighted_softmax_cross_entropy", &weighted_softmax_cross_entropy_cuda);
}

}  // namespace unet_fast
