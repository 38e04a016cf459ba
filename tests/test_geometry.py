"""Valid input sizes of a valid-convolution U-Net, checked against running the reference."""

import pytest
import torch

from unet_fast import UNetGeometry, reference

PAPER = UNetGeometry(depth=5, stages=4)


def test_paper_network_sizes():
    assert PAPER.output_size(572) == 388
    assert PAPER.valid_input_sizes(180, 600) == list(range(188, 600, 16))
    assert PAPER.nearest_valid_sizes(570) == (556, 572)
    assert PAPER.nearest_valid_sizes(100) == (None, 188)


def test_error_names_the_reason_and_nearest_sizes():
    with pytest.raises(ValueError, match=r"input size 570 .*odd size.*Nearest valid sizes: 556 and 572"):
        PAPER.output_size(570)
    with pytest.raises(ValueError, match=r"input size 100 .*smallest valid size is 188"):
        PAPER.output_size(100)


@pytest.mark.parametrize("enc_chs,dec_chs", [((1, 2, 4, 8), (8, 4, 2)), ((1, 2, 4, 8), (8, 4)), ((1, 2, 4), (4, 2))])
def test_valid_sizes_are_exactly_those_the_reference_runs_cleanly(enc_chs, dec_chs):
    geometry = UNetGeometry(depth=len(enc_chs) - 1, stages=len(dec_chs) - 1)
    model = reference.UNet(enc_chs=enc_chs, dec_chs=dec_chs)
    features = []
    model.encoder.register_forward_hook(lambda module, args, out: features.extend(out))
    for n in range(1, 90):
        features.clear()
        try:
            with torch.no_grad():
                out = model(torch.randn(1, 1, n, n))
        except RuntimeError:
            assert not geometry.is_valid(n), n
            continue
        pooled = features[:-1]
        even_pools = all(f.shape[-1] % 2 == 0 for f in pooled[: geometry.depth - 1])
        assert geometry.is_valid(n) == even_pools, n
        if geometry.is_valid(n):
            assert out.shape[-1] == geometry.output_size(n)


@pytest.mark.parametrize("enc_chs,dec_chs", [((1, 2, 4, 8), (8, 4, 2)), ((1, 2, 4, 8), (8, 4)), ((1, 2, 4), (4, 2))])
def test_join_sizes_are_what_the_reference_decoder_crops_to(enc_chs, dec_chs):
    geometry = UNetGeometry(depth=len(enc_chs) - 1, stages=len(dec_chs) - 1)
    model = reference.UNet(enc_chs=enc_chs, dec_chs=dec_chs)
    joined = []
    for upconv in model.decoder.upconvs:
        upconv.register_forward_hook(lambda module, args, out: joined.append(out.shape[-1]))
    for n in geometry.valid_input_sizes(1, 120):
        joined.clear()
        with torch.no_grad():
            model(torch.randn(1, 1, n, n))
        sizes = geometry.join_sizes(n)
        assert sizes[-1] is None and len(sizes) == geometry.depth
        assert [size for size in sizes if size is not None] == joined[::-1], n
        assert sizes[: geometry.depth - 1 - geometry.stages] == [None] * (geometry.depth - 1 - geometry.stages)


@pytest.mark.parametrize("depth, stages, smallest, step", [(5, 4, 188, 16), (4, 3, 92, 8), (3, 2, 44, 4), (5, 2, 188, 16)])
def test_valid_sizes_start_at_min_size_and_go_up_by_step(depth, stages, smallest, step):
    geometry = UNetGeometry(depth=depth, stages=stages)
    assert (geometry.min_size, geometry.step) == (smallest, step)
    assert geometry.valid_input_sizes(1, smallest + 10 * step) == list(range(smallest, smallest + 10 * step + 1, step))
