"""The fused ops. Each takes ``backend=`` (see :mod:`unet_fast.ops.backends`)."""

from unet_fast.ops.backends import available_backends
from unet_fast.ops.conv import conv3x3_bias_relu
from unet_fast.ops.conv_block import conv3x3_block
from unet_fast.ops.crop_concat import crop_concat
from unet_fast.ops.crop_concat_conv import crop_concat_conv3x3
from unet_fast.ops.decoder_block import crop_concat_conv3x3_block
from unet_fast.ops.max_pool import max_pool2x2, max_pool2x2_and_crop
from unet_fast.ops.up_conv import up_conv2x2
from unet_fast.ops.weighted_cross_entropy import weighted_softmax_cross_entropy

__all__ = ["available_backends", "conv3x3_bias_relu", "conv3x3_block", "crop_concat", "crop_concat_conv3x3", "crop_concat_conv3x3_block", "max_pool2x2", "max_pool2x2_and_crop", "up_conv2x2", "weighted_softmax_cross_entropy"]
