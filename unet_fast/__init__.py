"""Fast U-Net for biomedical image segmentation: fused kernels and the paper's method.

The public names load their modules on first use, so that ``import unet_fast`` costs a kernel
user neither the time nor the memory of the pipeline's dependencies (scipy, scikit-image,
tifffile, PIL).
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (the module itself where the two are the same)
_WHERE = {
    "TrainConfig": "unet_fast.checkpoint",
    "UNet": "unet_fast.unet",
    "UNetGeometry": "unet_fast.geometry",
    "WeightedSoftmaxCrossEntropyLoss": "unet_fast.losses",
    "crop_concat": "unet_fast.ops",
    "elastic_deform": "unet_fast.augment",
    "export": "unet_fast.exports",
    "flip_rotate": "unet_fast.augment",
    "folder_dataset": "unet_fast.data",
    "init_paper_": "unet_fast.init",
    "load_model": "unet_fast.checkpoint",
    "memory": "unet_fast.memory",
    "metrics": "unet_fast.metrics",
    "ops": "unet_fast.ops",
    "predict_tiled": "unet_fast.tiling",
    "segment": "unet_fast.predict",
    "segment_large": "unet_fast.blockwise",
    "synthetic_cells": "unet_fast.data",
    "threads": "unet_fast.threads",
    "train": "unet_fast.training",
    "weight_map": "unet_fast.weights",
    "weighted_softmax_cross_entropy": "unet_fast.ops",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'unet_fast' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    value = module if module.__name__ == f"unet_fast.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
