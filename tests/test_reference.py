"""The oracle itself: the blog post's U-Net, its shapes, crop rounding and parameter names."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import reference

SMALL = dict(enc_chs=(1, 4, 8, 16), dec_chs=(16, 8, 4))


def post_state_dict_keys(n_enc=5, n_dec=4):
    """The parameter names of the post's code, written out from its module structure."""
    keys = []
    for i in range(n_enc):
        keys += [f"encoder.enc_blocks.{i}.conv{j}.{p}" for j in (1, 2) for p in ("weight", "bias")]
    keys += [f"decoder.upconvs.{i}.{p}" for i in range(n_dec) for p in ("weight", "bias")]
    for i in range(n_dec):
        keys += [f"decoder.dec_blocks.{i}.conv{j}.{p}" for j in (1, 2) for p in ("weight", "bias")]
    return keys + ["head.weight", "head.bias"]


def test_paper_size_572_gives_388():
    model = reference.UNet()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_encoder_feature_shapes_match_the_post():
    with torch.no_grad():
        features = reference.Encoder()(torch.randn(1, 1, 572, 572))
    assert [tuple(f.shape) for f in features] == [
        (1, 64, 568, 568), (1, 128, 280, 280), (1, 256, 136, 136), (1, 512, 64, 64), (1, 1024, 28, 28)
    ]


@pytest.mark.parametrize("size,expected", [(188, 4), (204, 20), (252, 68)])
def test_other_valid_sizes(size, expected):
    with torch.no_grad():
        out = reference.UNet(enc_chs=(1, 8, 16, 32, 64, 128), dec_chs=(128, 64, 32, 16, 8))(
            torch.randn(2, 1, size, size)
        )
    assert out.shape == (2, 2, expected, expected)


def test_small_network_at_44():
    with torch.no_grad():
        assert reference.UNet(**SMALL, num_class=3)(torch.randn(1, 1, 44, 44)).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("diff,top", [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (7, 4), (9, 4)])
def test_center_crop_rounds_half_to_even_like_torchvision(diff, top):
    x = torch.arange(20 + diff, dtype=torch.float32).reshape(1, 1, 1, -1).expand(1, 1, 20 + diff, -1)
    cropped = reference.center_crop(x, (20, 20))
    assert cropped.shape[-2:] == (20, 20)
    assert cropped[0, 0, 0, 0].item() == top


def test_state_dict_keys_equal_the_posts():
    state = reference.UNet().state_dict()
    assert list(state) == post_state_dict_keys()
    assert state["encoder.enc_blocks.0.conv1.weight"].shape == (64, 1, 3, 3)
    assert state["decoder.upconvs.0.weight"].shape == (1024, 512, 2, 2)
    assert state["head.weight"].shape == (2, 64, 1, 1)


def test_retain_dim_resizes_to_out_sz_with_nearest():
    model = reference.UNet(**SMALL, retain_dim=True, out_sz=(44, 44))
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        out = model(x)
        model.retain_dim = False
        small = model(x)
    assert out.shape == (1, 2, 44, 44)
    torch.testing.assert_close(out, F.interpolate(small, (44, 44), mode="nearest"))


def test_decoder_concatenates_upsampled_before_skip():
    decoder = reference.Decoder(chs=(4, 2))
    seen = []
    decoder.dec_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x, skip = torch.randn(1, 4, 4, 4), torch.randn(1, 2, 13, 12)
    with torch.no_grad():
        decoder(x, [skip])
        upsampled = decoder.upconvs[0](x)
    torch.testing.assert_close(seen[0], torch.cat([upsampled, skip[:, :, 2:10, 2:10]], 1), rtol=0, atol=0)
