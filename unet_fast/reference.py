"""The U-Net of the blog post the project grew from, rewritten faithfully: the oracle that every
fused op and the drop-in :class:`unet_fast.UNet` are tested against.

Valid (unpadded) 3x3 convolutions, a ReLU only between the two convolutions of a block (as the
post has it), 2x2 max-pooling, 2x2 stride-2 transposed convolutions, centre crop-and-concat
skips in the order [upsampled, skip], and a 1x1 head: 1x1x572x572 in, 1x2x388x388 out.
Module and parameter names match the post's code, so state_dicts are interchangeable.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """Centre crop of the last two dims to ``size`` = (h, w), rounding the offsets exactly as
    torchvision's CenterCrop (Python's round, half to even)."""
    height, width = x.shape[-2:]
    h, w = size
    top = int(round((height - h) / 2.0))
    left = int(round((width - w) / 2.0))
    return x[..., top : top + h, left : left + w]


class Block(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


class Encoder(nn.Module):
    def __init__(self, chs=(1, 64, 128, 256, 512, 1024)):
        super().__init__()
        self.enc_blocks = nn.ModuleList([Block(chs[i], chs[i + 1]) for i in range(len(chs) - 1)])
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        encoder_ftrs = []
        for block in self.enc_blocks:
            x = block(x)
            encoder_ftrs.append(x)
            x = self.pool(x)
        return encoder_ftrs


class Decoder(nn.Module):
    def __init__(self, chs=(1024, 512, 256, 128, 64)):
        super().__init__()
        self.chs = chs
        self.upconvs = nn.ModuleList([nn.ConvTranspose2d(chs[i], chs[i + 1], 2, 2) for i in range(len(chs) - 1)])
        self.dec_blocks = nn.ModuleList([Block(chs[i], chs[i + 1]) for i in range(len(chs) - 1)])

    def forward(self, x, encoder_features):
        for i in range(len(self.chs) - 1):
            x = self.upconvs[i](x)
            enc_ftrs = self.crop(encoder_features[i], x)
            x = torch.cat([x, enc_ftrs], dim=1)
            x = self.dec_blocks[i](x)
        return x

    def crop(self, enc_ftrs, x):
        _, _, H, W = x.shape
        return center_crop(enc_ftrs, (H, W))


class UNet(nn.Module):
    def __init__(
        self,
        enc_chs=(1, 64, 128, 256, 512, 1024),
        dec_chs=(1024, 512, 256, 128, 64),
        num_class=2,
        retain_dim=False,
        out_sz=(572, 572),
    ):
        super().__init__()
        self.encoder = Encoder(enc_chs)
        self.decoder = Decoder(dec_chs)
        self.head = nn.Conv2d(dec_chs[-1], num_class, 1)
        self.retain_dim = retain_dim
        self.out_sz = out_sz
        self.dec_chs = dec_chs

    def forward(self, x):
        enc_ftrs = self.encoder(x)
        x = self.decoder(enc_ftrs[::-1][0], enc_ftrs[::-1][1:])
        x = self.head(x)
        if self.retain_dim:
            x = F.interpolate(x, self.out_sz)
        return x
