// ElementType of an ATen dtype, for the launch bindings.
#pragma once

#include <ATen/ATen.h>

#include "element_type.cuh"

namespace unet_fast {

inline ElementType element_type(at::ScalarType type, const char* op) {
  switch (type) {
    case at::kFloat: return ElementType::kFloat;
    case at::kDouble: return ElementType::kDouble;
    case at::kHalf: return ElementType::kHalf;
    case at::kBFloat16: return ElementType::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", type);
  }
}

}  // namespace unet_fast
