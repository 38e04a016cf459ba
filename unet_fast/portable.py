"""The U-Net in plain PyTorch, importing nothing but torch: the architecture file that exported
packages carry (bioimage.io's ``pytorch_state_dict`` weights name it), and the network that
TorchScript and ONNX export capture. The fused ops of unet_fast do not trace; this composite
form computes the same function with the same ``state_dict`` as :class:`unet_fast.UNet`, so a
trained model runs where unet_fast is not installed.

Valid 3x3 convolutions (a ReLU between the two of a block, and after the second too with
``paper_block``), 2x2 max-pooling, 2x2 stride-2 up-convolutions, centre crop-and-concat skips
[up-convolved, skip], a 1x1 head. The crop offsets are whole numbers for every input size the
network takes (height and width ``min_size + k * 2 ** (depth - 1)``), so ``(a - b) // 2``
equals the reference's rounding; it is written with shapes only, so TorchScript scripts it and
ONNX keeps height and width dynamic.
"""

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, final_relu: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3)
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(F.relu(self.conv1(x)))
        return F.relu(x) if self.final_relu else x


class Encoder(nn.Module):
    def __init__(self, chs: Sequence[int], final_relu: bool):
        super().__init__()
        self.enc_blocks = nn.ModuleList([Block(chs[i], chs[i + 1], final_relu) for i in range(len(chs) - 1)])
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Each block's output, the deepest last."""
        features: List[torch.Tensor] = []
        for level, block in enumerate(self.enc_blocks):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    def __init__(self, chs: Sequence[int], final_relu: bool):
        super().__init__()
        self.upconvs = nn.ModuleList([nn.ConvTranspose2d(chs[i], chs[i + 1], 2, 2) for i in range(len(chs) - 1)])
        self.dec_blocks = nn.ModuleList([Block(chs[i], chs[i + 1], final_relu) for i in range(len(chs) - 1)])

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        """``skips`` from the deepest join upwards."""
        stage = 0
        for upconv, block in zip(self.upconvs, self.dec_blocks):
            x = upconv(x)
            skip = skips[stage]
            top = (skip.shape[2] - x.shape[2]) // 2
            left = (skip.shape[3] - x.shape[3]) // 2
            window = skip[:, :, top:top + x.shape[2], left:left + x.shape[3]]
            x = block(torch.cat([x, window], dim=1))
            stage += 1
        return x


class UNet(nn.Module):
    """``UNet(enc_chs, dec_chs, num_class, paper_block)``: unet_fast.UNet's network and
    parameter names; input (N, enc_chs[0], H, W), output (N, num_class, H - shrink, W - shrink)."""

    def __init__(self, enc_chs: Sequence[int] = (1, 64, 128, 256, 512, 1024),
                 dec_chs: Sequence[int] = (1024, 512, 256, 128, 64), num_class: int = 2, paper_block: bool = False):
        super().__init__()
        self.encoder = Encoder(enc_chs, paper_block)
        self.decoder = Decoder(dec_chs, paper_block)
        self.head = nn.Conv2d(dec_chs[-1], num_class, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        skips = features[:-1]
        skips.reverse()
        return self.head(self.decoder(features[-1], skips))
