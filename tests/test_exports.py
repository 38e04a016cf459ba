"""Exports: TorchScript and ONNX equal the trained network, in every runtime installed."""

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import exports
from unet_fast.checkpoint import load_model

TOLERANCE = 1e-4  # relative to the output's norm


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def onnx_file(run, tmp_path_factory):
    pytest.importorskip("onnxscript")
    return exports.export(run, tmp_path_factory.mktemp("onnx"), "onnx")[0]


INPUTS = [(1, 1, 44, 44), (2, 1, 60, 48)]  # the smallest size, and another batch and shape


def _expected(run, shape, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, load_model(run)(x)


def _assert_near(actual, expected):
    actual = torch.as_tensor(np.asarray(actual))
    assert actual.shape == expected.shape
    assert (actual - expected).norm() <= TOLERANCE * expected.norm(), (actual - expected).norm() / expected.norm()


@pytest.mark.parametrize("shape", INPUTS)
def test_torchscript_equals_the_network(run, tmp_path, shape):
    [path] = unet_fast.export(run, tmp_path, "torchscript")
    assert path.name == "model.torchscript.pt"
    scripted = torch.jit.load(str(path))
    x, expected = _expected(run, shape)
    with torch.no_grad():
        _assert_near(scripted(x), expected)


@pytest.mark.parametrize("shape", INPUTS)
def test_onnx_equals_the_network_in_onnxruntime(run, onnx_file, shape):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["raw"] and [o.name for o in session.get_outputs()] == ["logits"]
    x, expected = _expected(run, shape)
    _assert_near(session.run(None, {"raw": x.numpy()})[0], expected)


@pytest.mark.parametrize("shape", INPUTS)
def test_onnx_equals_the_network_in_openvino(run, onnx_file, shape):
    openvino = pytest.importorskip("openvino")
    compiled = openvino.Core().compile_model(str(onnx_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x, expected = _expected(run, shape)
    _assert_near(compiled([x.numpy()])[0], expected)


def test_onnx_opset_and_the_network_size_arithmetic_in_its_metadata(onnx_file):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_file))
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    assert {p.key: p.value for p in model.metadata_props} == {"unet_fast.depth": "3", "unet_fast.stages": "2"}
    onnx.checker.check_model(model)


def test_refuses_a_non_empty_folder_unless_forced(run, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty.*--force"):
        exports.export(run, tmp_path, "torchscript")
    exports.export(run, tmp_path, "torchscript", force=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "model.torchscript.pt").is_file()


def test_refuses_what_is_not_a_checkpoint_or_a_format(run, tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a file torch.save wrote"):
        exports.export(tmp_path / "notes.pt", tmp_path / "out", "torchscript")
    with pytest.raises(ValueError, match="format must be one of bioimageio, torchscript, onnx"):
        exports.export(run, tmp_path / "out", "tflite")
    with pytest.raises(ValueError, match="only for format 'bioimageio'"):
        exports.export(run, tmp_path / "out", "onnx", name="x")
    assert not (tmp_path / "out").exists()


def test_a_missing_onnx_exporter_names_the_extra(run, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"onnxscript is not installed: pip install 'unet_fast\[export\]'"):
        exports.export(run, tmp_path, "onnx")
