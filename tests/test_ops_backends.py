"""The backend an op runs on by default."""

import pytest
import torch

from unet_fast.ops import backends

CUDA = torch.device("cuda")


@pytest.mark.parametrize("available,conv,pool", [
    (["cuda", "triton", "torch"], "cuda", "cuda"),
    (["triton", "torch"], "torch", "triton"),  # the Triton convolutions only when asked for
    (["torch"], "torch", "torch"),
])
def test_cuda_tensors_take_cudnns_convolutions_until_triton_is_measured(monkeypatch, available, conv, pool):
    monkeypatch.setattr(backends, "available_backends", lambda op, device: list(available))
    assert backends.resolve_backend("conv3x3_bias_relu", "auto", CUDA) == conv
    assert backends.resolve_backend("crop_concat_conv3x3", "auto", CUDA) == conv
    assert backends.resolve_backend("max_pool2x2", "auto", CUDA) == pool
    if "triton" in available:
        assert backends.resolve_backend("conv3x3_bias_relu", "triton", CUDA) == "triton"
