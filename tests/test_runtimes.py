"""Exported networks behind their runtimes: what unet_fast did not export is refused clearly."""

import pytest
import torch

from unet_fast import exports, portable, runtimes
from unet_fast.geometry import UNetGeometry
from unet_fast.tiling import predict_tiled


@pytest.fixture(scope="module")
def package(tiny_run, tmp_path_factory):
    pytest.importorskip("bioimageio.spec")
    out = tmp_path_factory.mktemp("package")
    exports.export(tiny_run, out)
    return out


def test_overlap_tile_inference_runs_the_exported_network(package):
    pytest.importorskip("onnxruntime")
    image = torch.rand(70, 90)
    package_logits = predict_tiled(runtimes.load_exported(package), image, tile=60)  # the folder: its rdf.yaml
    onnx_logits = predict_tiled(runtimes.load_exported(package / "model.onnx"), image, tile=60)
    assert package_logits.shape == (2, 70, 90)
    torch.testing.assert_close(onnx_logits, package_logits, rtol=1e-4, atol=1e-4)


def test_an_onnx_file_from_elsewhere_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    program = torch.onnx.export(portable.UNet((1, 4, 8, 16), (16, 8, 4)).eval(), (torch.zeros(1, 1, 60, 60),),
                                dynamo=True, verbose=False)
    program.save(str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="was not exported by unet-fast export"):
        runtimes.load_exported(tmp_path / "other.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        runtimes.load_exported(tmp_path / "broken.onnx")


def test_a_package_with_other_preprocessing_or_none_of_ours_is_refused(package, tmp_path):
    text = (package / "rdf.yaml").read_text()
    for name, changed, match in (("percentiles", text.replace("max_percentile: 99.8", "max_percentile: 99.0"),
                                  "preprocessing is not the percentile normalisation"),
                                 ("foreign", text.replace("  unet_fast:", "  elsewhere:"),
                                  "was not exported by unet-fast export")):
        folder = tmp_path / name
        folder.mkdir()
        for path in package.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "rdf.yaml").write_text(changed)
        with pytest.raises(ValueError, match=match):
            runtimes.load_exported(folder / "rdf.yaml")


def test_missing_files_and_runtimes_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="--model: no file at"):
        runtimes.load_exported(tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"needs onnxruntime: pip install 'unet_fast\[export\]'"):
        runtimes.load_exported(tmp_path / "model.onnx")


def test_the_geometry_comes_from_the_export(package):
    assert runtimes.load_exported(package / "rdf.yaml").geometry == UNetGeometry(depth=3, stages=2)
