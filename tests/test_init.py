"""The paper's He-Gaussian initialisation."""

import math

import pytest
import torch
import torch.nn as nn

import unet_fast
from unet_fast.init import fan_in, init_paper_


def test_fan_in_counts_the_inputs_of_one_output_unit():
    assert fan_in(nn.Conv2d(64, 128, 3)) == 64 * 9
    assert fan_in(nn.Conv2d(8, 8, (3, 5), groups=4)) == 2 * 15
    assert fan_in(nn.ConvTranspose2d(1024, 512, 2, 2)) == 1024  # one tap per input channel
    assert fan_in(nn.ConvTranspose2d(16, 8, 3, 1)) == 16 * 9


def test_every_convolution_gets_the_papers_standard_deviation_and_zero_bias():
    model = init_paper_(unet_fast.UNet(enc_chs=(1, 32, 64, 128), dec_chs=(128, 64, 32)), torch.Generator().manual_seed(0))
    convolutions = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convolutions) == 3 * 2 + 2 * 2 + 2 + 1
    for module in convolutions:
        expected = math.sqrt(2 / fan_in(module))
        assert module.weight.std().item() == pytest.approx(expected, rel=0.2 if module.weight.numel() > 500 else 0.6)
        assert module.weight.mean().abs().item() < 3 * expected / math.sqrt(module.weight.numel()) + 1e-6
        assert torch.count_nonzero(module.bias) == 0


def test_same_generator_seed_same_weights():
    first = init_paper_(unet_fast.UNet(enc_chs=(1, 4, 8), dec_chs=(8, 4)), torch.Generator().manual_seed(1))
    again = init_paper_(unet_fast.UNet(enc_chs=(1, 4, 8), dec_chs=(8, 4)), torch.Generator().manual_seed(1))
    for a, b in zip(first.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_activations_keep_their_scale_through_the_network():
    # The point of sqrt(2 / fan_in): ReLU layers neither blow up nor die out with depth.
    model = init_paper_(unet_fast.UNet(paper_block=True), torch.Generator().manual_seed(0))
    image = torch.randn(1, 1, 188, 188)
    with torch.no_grad():
        features = model.encoder(image, None)
    scales = [f.square().mean().sqrt().item() for f in features]
    assert max(scales) / min(scales) < 10, scales
