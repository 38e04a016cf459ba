"""Other inference engines beside ours: each installed one runs the post's U-Net and agrees
with unet_fast.UNet; what is missing is named, not hidden."""

import pytest

from unet_fast import peers


def test_every_installed_engine_agrees_with_ours():
    timings = peers.compare(size=188, rounds=1)
    assert timings[0].name == "the post's model, PyTorch eager"
    assert timings[-1].name == "unet_fast.UNet, bf16 autocast"
    names = [timing.name for timing in timings]
    assert any(name.startswith("onnxruntime") for name in names) and any("OpenVINO" in name for name in names)
    ran = [timing for timing in timings if timing.ms is not None]
    assert len(ran) >= 2
    for timing in ran:
        assert timing.agrees, (timing.name, timing.difference)
        assert timing.ours_faster > 0
    for timing in timings:
        assert (timing.ms is None) == bool(timing.missing)
    table = peers.format_table(timings, 188)
    assert table.count("\n") == len(timings) + 2 and "onnxruntime" in table


def test_a_missing_engine_is_listed_as_missing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ncnn", None)
    peer = peers._ncnn(tmp_path / "unused.onnx", 188, 1)
    assert peer.name == "ncnn" and peer.run is None and peer.missing == "not installed (ncnn and pnnx)"


def test_disagreement_is_flagged():
    timing = peers.PeerTiming("engine", 10.0, 5.0, 0.5, peers.FP32_AGREEMENT)
    assert not timing.agrees and timing.ours_faster == pytest.approx(2.0)
    assert "(!)" in peers.format_table([peers.PeerTiming("first", 1.0, 5.0, 0.0, 1e-3), timing], 188)


def test_why_an_engine_did_not_run_is_printed_whole():
    reason = "this CPU has no bf16 arithmetic"
    missing = peers.PeerTiming("OpenVINO bf16", None, 5.0, None, peers.FP32_AGREEMENT, reason)
    table = peers.format_table([peers.PeerTiming("first", 1.0, 5.0, 0.0, 1e-3), missing], 188)
    assert f"| {reason} |" in table
