// CPU registration of crop_concat_conv3x3: the composite of csrc/crop_concat_conv.h over the
// CPU kernels of crop_concat and conv3x3_bias_relu.
#include <torch/library.h>

#include "../crop_concat_conv.h"

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("crop_concat_conv3x3", &unet_fast::crop_concat_conv3x3_composite);
  m.impl("crop_concat_conv3x3_backward", &unet_fast::crop_concat_conv3x3_backward_composite);
}
