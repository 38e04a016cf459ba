"""Fast U-Net for biomedical image segmentation: fused kernels and the paper's method."""

from unet_fast import metrics, ops
from unet_fast.augment import elastic_deform, flip_rotate
from unet_fast.checkpoint import TrainConfig, load_model
from unet_fast.data import folder_dataset, synthetic_cells
from unet_fast.geometry import UNetGeometry
from unet_fast.init import init_paper_
from unet_fast.losses import WeightedSoftmaxCrossEntropyLoss
from unet_fast.ops import crop_concat, weighted_softmax_cross_entropy
from unet_fast.predict import segment
from unet_fast.tiling import predict_tiled
from unet_fast.training import train
from unet_fast.unet import UNet
from unet_fast.weights import weight_map

__all__ = [
    "TrainConfig",
    "UNet",
    "UNetGeometry",
    "WeightedSoftmaxCrossEntropyLoss",
    "crop_concat",
    "elastic_deform",
    "flip_rotate",
    "folder_dataset",
    "init_paper_",
    "load_model",
    "metrics",
    "ops",
    "predict_tiled",
    "segment",
    "synthetic_cells",
    "train",
    "weight_map",
    "weighted_softmax_cross_entropy",
]
__version__ = "0.1.0"
