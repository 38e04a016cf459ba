"""Fast U-Net for biomedical image segmentation: fused kernels and the paper's method."""

from unet_fast import ops
from unet_fast.geometry import UNetGeometry
from unet_fast.ops import crop_concat
from unet_fast.unet import UNet

__all__ = ["UNet", "UNetGeometry", "crop_concat", "ops"]
__version__ = "0.1.0"
