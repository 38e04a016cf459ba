"""unet_fast's environment switches are read once: changing os.environ afterwards changes
nothing until settings.reload()."""

from pathlib import Path

import pytest
import torch

from unet_fast import settings
from unet_fast.ops import backends, conv3x3_bias_relu


def test_the_backend_is_read_once(environment, monkeypatch):
    environment.setenv("UNET_FAST_BACKEND", "torch")
    assert backends.resolve_backend("crop_concat", None, torch.device("cpu")) == "torch"
    monkeypatch.setenv("UNET_FAST_BACKEND", "no-such-backend")
    assert backends.resolve_backend("crop_concat", None, torch.device("cpu")) == "torch"
    settings.reload()
    with pytest.raises(ValueError, match="UNET_FAST_BACKEND must be one of"):
        backends.resolve_backend("crop_concat", None, torch.device("cpu"))


@pytest.mark.skipif(not backends.extension_loaded(), reason="the C++ extension is not built")
def test_a_winograd_setting_is_read_once(environment, monkeypatch):
    environment.setenv("UNET_FAST_WINOGRAD", "4")
    x, weight, bias = torch.randn(1, 8, 12, 12), torch.randn(8, 8, 3, 3), torch.randn(8)
    first = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    monkeypatch.setenv("UNET_FAST_WINOGRAD", "5")
    assert torch.equal(conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), first)
    settings.reload()
    with pytest.raises(ValueError, match="UNET_FAST_WINOGRAD must be 0, 1, 2, 4 or 6"):
        conv3x3_bias_relu(x, weight, bias, True, backend="cpu")


def test_what_each_switch_reads(environment, tmp_path):
    environment.setenv("UNET_FAST_TUNE", "0")
    environment.setenv("UNET_FAST_CACHE_DIR", str(tmp_path))
    assert settings.current() == settings.Settings(backend="auto", tune=False, cache_dir=tmp_path, winograd="")
    environment.delenv("UNET_FAST_TUNE")
    environment.delenv("UNET_FAST_CACHE_DIR")
    environment.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    environment.setenv("UNET_FAST_BACKEND", "cpu")
    assert settings.current() == settings.Settings(backend="cpu", tune=True, cache_dir=tmp_path / "xdg" / "unet_fast",
                                                   winograd="")
    environment.delenv("XDG_CACHE_HOME")
    assert settings.current().cache_dir == Path.home() / ".cache" / "unet_fast"
