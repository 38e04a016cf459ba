"""The bioimage.io package: valid model spec 0.5 as bioimageio.spec reads it, the size
arithmetic and preprocessing of training, test tensors the model made, and every weight
format passing bioimageio.core's test."""

import numpy as np
import pytest
import torch
from PIL import Image

from unet_fast import data, exports
from unet_fast.checkpoint import TrainConfig, load_model
from unet_fast.training import train

spec = pytest.importorskip("bioimageio.spec")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(widths=(4, 8, 16), tile=60, steps=2, synthetic_images=2, synthetic_size=64, val_every=1,
                      checkpoint_every=0), run)
    out = tmp_path_factory.mktemp("package")
    exports.export(run, out, authors=["A. Person", "B. Person"], name="test cells")
    return run, out


def test_the_description_is_valid_and_says_what_the_network_takes(package):
    _, out = package
    model = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(model, spec.InvalidDescr), model.validation_summary
    assert model.format_version.startswith("0.5") and model.name == "test cells"
    assert [author.name for author in model.authors] == ["A. Person", "B. Person"]
    assert model.cite[0].doi == "10.1007/978-3-319-24574-4_28" and str(model.license) == "CC-BY-4.0"
    [raw], [logits] = model.inputs, model.outputs
    assert [axis.type for axis in raw.axes] == ["batch", "channel", "space", "space"]
    assert [(axis.size.min, axis.size.step) for axis in raw.axes[2:]] == [(44, 4), (44, 4)]  # depth 3
    assert [(axis.size.tensor_id, axis.size.offset) for axis in logits.axes[2:]] == [("raw", -40), ("raw", -40)]
    assert logits.axes[1].channel_names == ["background", "foreground"]
    steps = [(step.id, getattr(step.kwargs, "min_percentile", None), getattr(step.kwargs, "max_percentile", None))
             for step in raw.preprocessing]
    assert steps == [("ensure_dtype", None, None), ("scale_range", 1.0, 99.8), ("ensure_dtype", None, None)]
    assert {model.weights.torchscript.parent, model.weights.onnx.parent} == {"pytorch_state_dict"}
    assert model.weights.onnx.opset_version >= 17
    assert model.config.model_extra["unet_fast"]["training"]["widths"] == [4, 8, 16]


def test_test_output_is_the_network_on_the_normalised_test_input(package):
    run, out = package
    raw = np.load(out / "test_input.npy")
    assert raw.shape == (1, 1, 60, 60) and raw.dtype == np.float32  # one training tile
    with torch.no_grad():
        expected = load_model(run)(torch.from_numpy(data.normalize_percentiles(raw[0, 0]))[None, None])
    np.testing.assert_allclose(np.load(out / "test_output.npy"), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_documentation_and_cover(package):
    _, out = package
    text = (out / "documentation.md").read_text()
    assert "\n# Validation\n" in text and "10.1007/978-3-319-24574-4_28" in text and "validation at step 2" in text
    with Image.open(out / "cover.png") as cover:
        assert cover.width == 2 * cover.height >= 512  # input and prediction side by side


def test_architecture_file_runs_without_unet_fast(package, tmp_path):
    import subprocess
    import sys

    _, out = package
    script = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import unet; "
              "m = unet.UNet(enc_chs=[1, 4, 8, 16], dec_chs=[16, 8, 4], paper_block=True); "
              "m.load_state_dict(torch.load(sys.argv[1] + '/weights.pt', weights_only=True)); print('ok')")
    blocked = tmp_path / "unet_fast"  # shadows the library: importing it would fail
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('unet_fast must not be needed')")
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                            cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("weight_format", ["pytorch_state_dict", "torchscript", "onnx"])
def test_bioimageio_core_test_passes(package, weight_format):
    core = pytest.importorskip("bioimageio.core")
    if weight_format == "onnx":
        pytest.importorskip("onnxruntime")
    summary = core.test_model(package[1] / "rdf.yaml", weight_format=weight_format)
    assert summary.status == "passed", summary.display() or summary
