"""Exported networks run for prediction: an ONNX file through onnxruntime, or a bioimage.io
package's TorchScript weights through torch, wrapped so that overlap-tile inference
(:func:`unet_fast.tiling.predict_tiled`) runs them as it runs a :class:`unet_fast.UNet`.

Only what unet_fast exported: the network's depth comes from the ONNX metadata or the package's
``config.unet_fast``, and a package's preprocessing must be the one ``predict`` applies.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from unet_fast.geometry import UNetGeometry


class ExportedNetwork(nn.Module):
    """A network behind a runtime, with the ``geometry`` overlap-tile inference needs; float32
    (N, 1, H, W) in, logits (N, 2, H', W') out, on the CPU."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], geometry: UNetGeometry, source: Path):
        super().__init__()
        self.run, self.geometry, self.source = run, geometry, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x.float().cpu().contiguous())

    def extra_repr(self) -> str:
        return f"source={str(self.source)!r}"


def load_exported(path: str | Path) -> ExportedNetwork:
    """The network of ``path``: a bioimage.io package's ``rdf.yaml`` (or its folder), or an ONNX
    file, as ``unet-fast export`` wrote them."""
    path = Path(path)
    if path.is_dir():
        path = path / "rdf.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--model: no file at {path}")
    if path.suffix.lower() == ".onnx":
        return _onnx_network(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _package_network(path)
    raise ValueError(f"--model {path}: expected a bioimage.io rdf.yaml or an .onnx file from unet-fast export")


def _onnx_network(path: Path) -> ExportedNetwork:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"running {path} needs onnxruntime: pip install 'unet_fast[export]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for files it cannot load
        raise ValueError(f"cannot load ONNX model {path}: {error}") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if "unet_fast.depth" not in metadata:
        raise ValueError(f"{path} was not exported by unet-fast export: it does not say which input sizes it takes")
    geometry = UNetGeometry(depth=int(metadata["unet_fast.depth"]), stages=int(metadata["unet_fast.stages"]))
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return ExportedNetwork(run, geometry, path)


def _package_network(path: Path) -> ExportedNetwork:
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"reading {path} needs bioimageio.spec: pip install 'unet_fast[export]'") from None
    description = load_description(path, perform_io_checks=False)
    if isinstance(description, InvalidDescr) or getattr(description, "type", None) != "model":
        raise ValueError(f"{path} is not a valid bioimage.io model description")
    ours = (description.config.model_extra or {}).get("unet_fast") if description.config else None
    if not ours:
        raise ValueError(f"{path} was not exported by unet-fast export; run other bioimage.io models with "
                         "bioimageio.core")
    _check_preprocessing(description, path)
    weights = description.weights.torchscript
    if weights is None:
        raise ValueError(f"{path} holds no TorchScript weights")
    with warnings.catch_warnings():  # (torch calls TorchScript deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        network = torch.jit.load(str(path.parent / str(weights.source.path)), map_location="cpu").eval()
    geometry = UNetGeometry(depth=int(ours["depth"]), stages=int(ours["stages"]))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return network(x)

    return ExportedNetwork(run, geometry, path)


def _check_preprocessing(description, path: Path) -> None:
    """``predict`` normalises each image between its 1st and 99.8th percentile; a package that
    asks for other preprocessing would get wrong inputs."""
    from unet_fast.bioimage_package import PERCENTILES

    ranges = [(step.kwargs.min_percentile, step.kwargs.max_percentile)
              for step in description.inputs[0].preprocessing if step.id == "scale_range"]
    if ranges != [PERCENTILES]:
        raise ValueError(f"{path}: its preprocessing is not the percentile normalisation {PERCENTILES} that "
                         "unet-fast predict applies")
