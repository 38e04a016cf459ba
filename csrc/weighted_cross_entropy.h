// Device-independent part of the weighted softmax cross-entropy op: checks and allocation.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/weighted_cross_entropy.h"

namespace unet_fast {

inline Reduction parse_reduction(c10::string_view name) {
  if (name == "none") return Reduction::kNone;
  if (name == "mean") return Reduction::kMean;
  if (name == "sum") return Reduction::kSum;
  TORCH_CHECK(false, "weighted_softmax_cross_entropy: reduction must be 'none', 'mean' or 'sum', got '",
              std::string(name), "'");
}

inline void check_weighted_cross_entropy_args(const at::Tensor& logits, const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& class_weight) {
  TORCH_CHECK(logits.dim() == 4, "weighted_softmax_cross_entropy: logits must be (N, C, H, W)");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "weighted_softmax_cross_entropy: logits must be floating point");
  TORCH_CHECK(target.dim() == 3 && target.size(0) == logits.size(0) &&
                  target.size(1) == logits.size(2) && target.size(2) == logits.size(3),
              "weighted_softmax_cross_entropy: target must be (N, H, W) matching logits");
  TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
              "weighted_softmax_cross_entropy: target must hold integer labels");
  if (weight) {
    TORCH_CHECK(weight->sizes() == target.sizes(),
                "weighted_softmax_cross_entropy: weight must be (N, H, W) like target");
  }
  if (class_weight) {
    TORCH_CHECK(class_weight->dim() == 1 && class_weight->size(0) == logits.size(1),
                "weighted_softmax_cross_entropy: class_weight must be (C,)");
  }
}

// Inputs as the kernels read them: contiguous logits and labels, float32 weights.
struct WeightedCrossEntropyInputs {
  at::Tensor logits, target, weight, class_weight;  // weight, class_weight: undefined if absent
};

inline WeightedCrossEntropyInputs prepare_weighted_cross_entropy_inputs(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& class_weight, at::ScalarType target_type) {
  check_weighted_cross_entropy_args(logits, target, weight, class_weight);
  return {logits.contiguous(), target.to(target_type).contiguous(),
          weight ? weight->to(at::kFloat).contiguous() : at::Tensor(),
          class_weight ? class_weight->to(at::kFloat).contiguous() : at::Tensor()};
}

// The loss (N, H, W) or a scalar, and the gradient for grad_output = 1 (empty unless asked).
inline std::tuple<at::Tensor, at::Tensor> allocate_weighted_cross_entropy_outputs(
    const at::Tensor& logits, Reduction reduction, bool compute_grad) {
  const auto options = logits.options();
  at::Tensor loss = reduction == Reduction::kNone
                        ? at::empty({logits.size(0), logits.size(2), logits.size(3)}, options)
                        : at::empty({}, options);
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), options) : at::empty({0}, options);
  return {loss, grad};
}

}  // namespace unet_fast
