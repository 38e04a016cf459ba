"""tools/profile_stages.py: the FMA peak it rates against (csrc/cpu/fma_peak.cpp), and which
GEMMs it counts as one core's (Winograd's products and the up-convolutions' pieces, inside our
parallel regions)."""

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

from unet_fast import _C

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("profile_stages", ROOT / "tools" / "profile_stages.py")
profile_stages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_stages)

# Two FMA units x 16 fp32 lanes x 2 FLOPs at 6 GHz: more than any core here can do.
MOST_A_CORE = 2 * 16 * 2 * 6.0


@contextlib.contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_the_fma_peak_is_a_rate_no_gemm_on_the_core_beats():
    """A core's FMA peak bounds what a GEMM on it reaches (MKL's included), and no core does
    more than two 16-lane FMA units at 6 GHz. Both on one thread, alternating, the best of
    short runs of each (so that on a shared host both have runs the others left alone; 0.8
    for the rest of its noise)."""
    gemm = fma = 0.0
    with one_thread():
        for _ in range(5):
            gemm = max(gemm, profile_stages.gemm_gflops(side=384, rounds=5))
            for _ in range(3):
                rates = _C.cpu_fma_peak_gflops(0.005)
                assert len(rates) == 1
                fma = max(fma, rates[0])
    assert 0 < fma <= MOST_A_CORE
    assert fma >= 0.8 * gemm, (fma, gemm)


def test_the_fma_peak_has_a_rate_for_each_thread():
    rates = _C.cpu_fma_peak_gflops(0.05)
    assert len(rates) == torch.get_num_threads()
    assert all(0 < rate <= MOST_A_CORE for rate in rates), rates


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), 61.0])
def test_the_fma_peak_refuses_a_duration_outside_a_minute(seconds):
    with pytest.raises(ValueError, match=r"seconds must be in \(0, 60\]"):
        _C.cpu_fma_peak_gflops(seconds)


def gemm_stages(run) -> list[str]:
    """The stage of each GEMM event (ours or ATen's) in a profile of ``run()`` on one thread
    (with more, the profiled thread may get none of a small pass's GEMMs)."""
    with one_thread(), torch.profiler.profile(record_shapes=True) as prof:
        run()
    names = profile_stages.GEMMS + (profile_stages.OWN_GEMM,)
    return [profile_stages._stage(event) for event in prof.events() if event.name in names]


@pytest.mark.parametrize("channels,algorithm", [(64, "winograd6"), (256, "winograd4")])
def test_winograd_products_count_as_one_cores(channels, algorithm):
    """The pieces' products of narrow layers (our kernel, or ATen's batched GEMM) and the wide
    layers' point by point (ATen's), forward and both gradients: every GEMM is a Winograd
    product, rated against one core's peak."""
    x = torch.randn(1, channels, 20, 20).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(1, channels, 18, 18).contiguous(memory_format=torch.channels_last)
    out = torch.ops.unet_fast.conv3x3_bias_relu(x, weight, None, False, algorithm)

    def passes():
        torch.ops.unet_fast.conv3x3_bias_relu(x, weight, None, False, algorithm)
        torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x, weight, out, [True, True, False], algorithm, algorithm)

    stages = gemm_stages(passes)
    assert stages and set(stages) == {profile_stages.POINT_PRODUCTS}
    assert profile_stages.POINT_PRODUCTS in profile_stages.ONE_CORE_STAGES


def test_small_up_convolutions_and_the_backward_gemms_count_as_all_cores():
    x = torch.randn(1, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 32, 2, 2)
    grad = torch.randn(1, 32, 32, 32)
    stages = gemm_stages(lambda: (torch.ops.unet_fast.up_conv2x2(x, weight, None),
                                  torch.ops.unet_fast.up_conv2x2_backward(grad, x, weight, [True, True, True])))
    assert len(stages) == 3 and set(stages) == {profile_stages.UP_CONVOLUTION_GEMMS}
    assert profile_stages.UP_CONVOLUTION_GEMMS not in profile_stages.ONE_CORE_STAGES


def test_up_convolutions_by_pieces_count_as_one_cores():
    """Large enough for the forward to go by pieces of 32 rows, a GEMM each (five pieces)."""
    x = torch.randn(1, 64, 160, 16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 32, 2, 2)
    stages = gemm_stages(lambda: torch.ops.unet_fast.up_conv2x2(x, weight, None))
    assert stages == [profile_stages.UP_CONVOLUTION_PIECE_GEMMS] * 5
    assert profile_stages.UP_CONVOLUTION_PIECE_GEMMS in profile_stages.ONE_CORE_STAGES


def test_the_forwards_multiplications_at_572():
    """The post's U-Net at 572: 289.6 GFLOP of 3x3 convolutions done directly; by F(6x6) all
    but the first layer's need at most 324/64 fewer (fewer where the last tiles overhang);
    the first layer, the four up-convolutions and the head, counted by hand."""
    gflop = profile_stages.forward_gflop(572)
    first = 2 * 9 * 64 * 570**2 / 1e9
    assert gflop["direct 3x3"] == pytest.approx(289.56, abs=0.01)
    assert 4.9 < (gflop["direct 3x3"] - first) / gflop["F(6x6) products"] < 324 / 64
    up = sum(2 * 4 * c * c // 2 * side**2 for c, side in ((1024, 28), (512, 52), (256, 100), (128, 196))) / 1e9
    assert gflop["the rest"] == pytest.approx(first + up + 2 * 64 * 2 * 388**2 / 1e9, rel=1e-9)
