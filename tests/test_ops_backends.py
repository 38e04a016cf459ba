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


def test_private_torch_queries_have_working_fallbacks(monkeypatch):
    from unet_fast import tuning

    backends._has_kernel.cache_clear()
    tuning.onednn_native.cache_clear()
    try:
        monkeypatch.delattr(torch._C, "_dispatch_has_kernel_for_dispatch_key")
        monkeypatch.setattr(torch.ops, "mkldnn", object())  # a torch without the mkldnn queries
        assert backends._has_kernel("crop_concat", "CPU") == backends.extension_loaded()
        assert backends.resolve_backend("crop_concat", "auto", torch.device("cpu")) in ("cpu", "torch")
        assert tuning.onednn_native("bfloat16") is False  # so bf16 is computed in fp32, which runs anywhere
        shape = tuning.ConvShape("forward", "bfloat16", 1, 8, 8, 6, 6)
        assert all(name.startswith("float:") for name in tuning.candidates(shape))
    finally:
        monkeypatch.undo()
        backends._has_kernel.cache_clear()
        tuning.onednn_native.cache_clear()


def test_an_op_with_a_named_backend_looks_for_triton_once(monkeypatch):
    """Looking for Triton on the path at every call cost more than a small op itself."""
    import importlib.util

    looked_for = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: looked_for.append(name) or real(name, *args))
    backends._has_triton_kernel.cache_clear()
    try:
        for _ in range(3):
            assert backends.resolve_backend("max_pool2x2", "torch", torch.device("cpu")) == "torch"
        assert looked_for.count("triton") <= 1
    finally:
        backends._has_triton_kernel.cache_clear()
