"""Loss modules over the fused ops."""

from __future__ import annotations

import torch
import torch.nn as nn

from unet_fast.ops import weighted_softmax_cross_entropy


class WeightedSoftmaxCrossEntropyLoss(nn.Module):
    """The U-Net paper's pixel-weighted softmax cross-entropy as a module: ``loss(logits,
    target, weight=None)``. See :func:`unet_fast.ops.weighted_softmax_cross_entropy`."""

    def __init__(
        self,
        class_weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        backend: str | None = None,
    ):
        super().__init__()
        self.register_buffer("class_weight", None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32))
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_softmax_cross_entropy(
            logits, target, weight, class_weight=self.class_weight, ignore_index=self.ignore_index,
            reduction=self.reduction, backend=self.backend,
        )
