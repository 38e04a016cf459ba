"""Fast U-Net for biomedical image segmentation: fused kernels and the paper's method."""

from unet_fast import ops
from unet_fast.geometry import UNetGeometry
from unet_fast.losses import WeightedSoftmaxCrossEntropyLoss
from unet_fast.ops import crop_concat, weighted_softmax_cross_entropy
from unet_fast.unet import UNet
from unet_fast.weights import weight_map

__all__ = [
    "UNet",
    "UNetGeometry",
    "WeightedSoftmaxCrossEntropyLoss",
    "crop_concat",
    "ops",
    "weight_map",
    "weighted_softmax_cross_entropy",
]
__version__ = "0.1.0"
