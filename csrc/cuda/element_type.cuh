// The element types the CUDA kernels take, named without torch headers.
#pragma once

namespace unet_fast {

enum class ElementType : int { kFloat, kDouble, kHalf, kBFloat16 };

}  // namespace unet_fast
