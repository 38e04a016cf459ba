"""A trained network as a bioimage.io model package (model spec 0.5), which Fiji (deepImageJ),
ilastik, QuPath, napari and the BioImage Model Zoo run: the state dict with its plain-PyTorch
architecture file, TorchScript and ONNX weights, test tensors the model made, a cover, a
documentation page and ``rdf.yaml``, written and then validated with ``bioimageio.spec``.

The input is one grey channel, normalised as training normalised it (``scale_range`` between
the 1st and 99.8th percentile of each image, as :func:`unet_fast.data.normalize_percentiles`);
height and width are ``min_size + k * step``; the output is the two classes' logits
(background, foreground), ``min_size - output_size(min_size)`` pixels smaller: the valid
convolutions' margin, which a consumer tiling a large image overlaps by.
"""

from __future__ import annotations

import getpass
import math
from pathlib import Path

import numpy as np
import torch

import unet_fast
from unet_fast import data, exports, files, instances, portable
from unet_fast.tiling import mirror_window
from unet_fast.training import SYNTHETIC as STYLES

PERCENTILES = data.PERCENTILES
COVER_HEIGHT = 256
PAPER = ("Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical Image "
         "Segmentation. MICCAI 2015, LNCS 9351, 234-241", "10.1007/978-3-319-24574-4_28")


def write_package(checkpoint: dict, model: portable.UNet, out: Path, *, name: str | None = None,
                  authors: list[str] | None = None, license: str | None = None, sample: str | Path | None = None
                  ) -> list[Path]:
    """Writes the package of ``checkpoint`` (as loaded) into the folder ``out``; ``model`` is its
    network in plain PyTorch. ``sample``: an image whose centre becomes the test input (default:
    an image of the training data). Returns the files written, ``rdf.yaml`` last."""
    exports.require_extra("bioimageio.spec", "onnx", "onnxscript")
    config = checkpoint["config"]
    geometry = config.geometry
    raw = _test_input(config, sample)
    normalised = data.normalize_percentiles(raw, *PERCENTILES)
    with torch.no_grad():
        logits = model(torch.from_numpy(normalised)[None, None]).numpy()
    margin = (raw.shape[0] - logits.shape[-1]) // 2
    written = [
        _save_tensor(out / "test_input.npy", raw[None, None]),
        _save_tensor(out / "test_output.npy", logits),
        _save_sample(out / "sample_input.tif", raw),
        _save_sample(out / "sample_output.tif", logits[0]),
        _write_state_dict(model, out / "weights.pt"),
        exports.copy_architecture(out),
        exports.to_torchscript(model, out / exports.WRITES["torchscript"]),
        exports.to_onnx(model, geometry, out / exports.WRITES["onnx"]),
        _write_cover(normalised[margin:-margin, margin:-margin], logits[0], out / "cover.png"),
    ]
    validation = checkpoint["history"]["validation"][-1] if checkpoint["history"].get("validation") else None
    written.append(_write_documentation(config, checkpoint["step"], validation, out / "documentation.md"))
    description = _describe(config, checkpoint["step"], out, name=name or _default_name(config),
                            authors=authors or [getpass.getuser()], license=license or "CC-BY-4.0")
    written.append(_save_and_validate(description, out / "rdf.yaml"))
    return written


def _test_input(config, sample: str | Path | None) -> np.ndarray:
    """The test image, raw (float32, as a microscope gave it), cut to one training tile from the
    centre of ``sample``, of the training data's first image, or of a synthetic image."""
    if sample is not None:
        image = files.read_frames(sample)[0]
    elif config.data in STYLES:
        image = data.synthetic_cells(config.tile, config.tile, seed=config.seed, style=STYLES[config.data]).image
    else:
        found = sorted(p for p in (Path(config.data) / "images").glob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"the training images ({config.data}/images) are not there to take a test image "
                                    "from: pass --sample IMAGE")
        image = files.read_frames(found[0])[0]
    height, width = image.shape
    top, left = (height - config.tile) // 2, (width - config.tile) // 2
    window = mirror_window(torch.from_numpy(image.astype(np.float32)), top, left, config.tile, config.tile)
    return window.numpy()


def _save_tensor(path: Path, array: np.ndarray) -> Path:
    with files.atomic_path(path) as temporary:
        np.save(temporary, np.ascontiguousarray(array, dtype=np.float32))
    return path


def _save_sample(path: Path, array: np.ndarray) -> Path:
    """A tensor as a float32 TIFF, which image viewers open (the FAIR "sample tensor")."""
    import tifffile

    with files.atomic_path(path) as temporary:
        tifffile.imwrite(temporary, array.astype(np.float32))
    return path


def _write_state_dict(model: torch.nn.Module, path: Path) -> Path:
    with files.atomic_path(path) as temporary:
        torch.save(model.state_dict(), temporary)
    return path


def _write_cover(image: np.ndarray, logits: np.ndarray, path: Path) -> Path:
    """Input (the output's field of view) and the segmented cells side by side, enlarged to at
    least COVER_HEIGHT pixels."""
    labels = instances.from_probability(instances.foreground_probability(logits), "watershed")
    grey = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    picture = np.concatenate([grey, files.overlay(image, labels)], axis=1)
    factor = math.ceil(COVER_HEIGHT / picture.shape[0])
    files.write_rgb(path, picture.repeat(factor, axis=0).repeat(factor, axis=1))
    return path


def _default_name(config) -> str:
    what = STYLES.get(config.data, Path(config.data).name)
    return f"U-Net for {what} cells (unet_fast)"


def _training_lines(config, step: int, validation: dict | None) -> list[str]:
    recipe = (f"{config.optimizer.upper() if config.optimizer == 'sgd' else 'Adam'}, learning rate {config.lr:g}"
              + (f", momentum {config.momentum:g}" if config.optimizer == "sgd" else "")
              + (f", {config.warmup_steps} warm-up steps" if config.warmup_steps else "")
              + (", cosine decay" if config.lr_decay == "cosine" else ""))
    lines = [f"- data: `{config.data}`; {step} steps of {config.batch_size} tile(s) of {config.tile} pixels",
             f"- network: widths {', '.join(map(str, config.widths))}; "
             f"ReLU after {'both convolutions' if config.paper_block else 'the first convolution'} of a block",
             f"- optimiser: {recipe}",
             f"- loss: softmax cross-entropy weighted by the paper's weight map (w0 = {config.w0:g}, sigma = "
             f"{config.sigma:g} pixels); elastic deformation sigma {config.elastic_sigma:g} pixels",
             f"- input normalisation: intensities at the {PERCENTILES[0]:g}th and {PERCENTILES[1]:g}th percentile of "
             "each image mapped to 0 and 1"]
    if validation:
        lines.append(f"- held-out validation at step {validation['step']}: foreground IoU {validation['iou']:.3f}, "
                     f"Dice {validation['dice']:.3f}" + (f", AP50 {validation['ap50']:.3f}" if "ap50" in validation
                                                         else ""))
    return lines


def _write_documentation(config, step: int, validation: dict | None, path: Path) -> Path:
    geometry = config.geometry
    shrink = geometry.min_size - geometry.output_size(geometry.min_size)
    text = "\n".join([
        f"# {_default_name(config)}",
        "",
        "A U-Net (Ronneberger et al., 2015) with valid convolutions, trained with unet_fast. It takes one grey "
        "channel and gives two logits per pixel (background, foreground); the foreground is where the second "
        "exceeds the first. Touching cells are parted by thin background lines the network learned from the "
        "paper's border-weighted loss.",
        "",
        "## Inputs and outputs",
        "",
        f"- input `raw`: batch, channel (1), y, x; y and x take {geometry.min_size} + k * {geometry.step} pixels "
        f"(k = 0, 1, ...)",
        f"- output `logits`: batch, channel (2), y, x, each side {shrink} pixels smaller than the input's "
        f"({shrink // 2} lost on each border): tile large images with that much overlap, mirroring at the borders",
        "",
        "## Training",
        "",
        *_training_lines(config, step, validation),
        "",
        "# Validation",
        "",
        "The numbers above are on images held out of training. Check the model on your own annotated images "
        "before relying on it: with unet_fast installed, `unet-fast predict IMAGES --model rdf.yaml --out PRED` "
        "then `unet-fast evaluate --pred PRED --masks MASKS` (foreground IoU, Dice, average precision at IoU "
        "0.5-0.9, the Cell Tracking Challenge SEG). `bioimageio test rdf.yaml` checks that every weight format "
        "reproduces the test output.",
        "",
        "## Citation",
        "",
        f"{PAPER[0]}. doi:{PAPER[1]}",
        "",
    ])
    with files.atomic_path(path) as temporary:
        temporary.write_text(text)
    return path


def _describe(config, step: int, out: Path, *, name: str, authors: list[str], license: str):
    """The model's bioimage.io description (spec 0.5), its files resolved in ``out``."""
    from bioimageio.spec import ValidationContext

    with ValidationContext(root=out.resolve(), perform_io_checks=True):
        return _description(config, step, name=name, authors=authors, license=license)


def _description(config, step: int, *, name: str, authors: list[str], license: str):
    from bioimageio.spec.model import v0_5 as spec

    geometry = config.geometry
    shrink = geometry.min_size - geometry.output_size(geometry.min_size)
    space = spec.ParameterizedSize(min=geometry.min_size, step=geometry.step)
    raw_id = spec.TensorId("raw")
    input_tensor = spec.InputTensorDescr(
        id=raw_id, description="grey image, raw intensities",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("raw")]),
              *[spec.SpaceInputAxis(id=spec.AxisId(axis), size=space) for axis in ("y", "x")]],
        test_tensor=spec.FileDescr(source="test_input.npy"), sample_tensor=spec.FileDescr(source="sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
            spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId("y"), spec.AxisId("x")], min_percentile=PERCENTILES[0],
                max_percentile=PERCENTILES[1])),
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
        ],
    )
    output_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("background"),
                                                                     spec.Identifier("foreground")])]
    output_axes += [spec.SpaceOutputAxis(id=spec.AxisId(axis), size=spec.SizeReference(
        tensor_id=raw_id, axis_id=spec.AxisId(axis), offset=-shrink)) for axis in ("y", "x")]
    output_tensor = spec.OutputTensorDescr(id=spec.TensorId("logits"), description="background and foreground logits",
                                           axes=output_axes, test_tensor=spec.FileDescr(source="test_output.npy"),
                                           sample_tensor=spec.FileDescr(source="sample_output.tif"),
                                           data=spec.IntervalOrRatioDataDescr(type="float32"))
    torch_version = spec.Version(torch.__version__.split("+")[0])
    state_dict = spec.PytorchStateDictWeightsDescr(
        source="weights.pt", pytorch_version=torch_version,
        architecture=spec.ArchitectureFromFileDescr(source="unet.py", callable=spec.Identifier("UNet"),
                                                    kwargs=exports.architecture_kwargs(config)))
    weights = spec.WeightsDescr(
        pytorch_state_dict=state_dict,
        torchscript=spec.TorchscriptWeightsDescr(source=exports.WRITES["torchscript"],
                                                 pytorch_version=torch_version, parent="pytorch_state_dict"),
        onnx=spec.OnnxWeightsDescr(source=exports.WRITES["onnx"], opset_version=exports.ONNX_OPSET,
                                   parent="pytorch_state_dict"))
    training = spec.TrainingDetails(
        training_preprocessing="percentile normalisation (1, 99.8), random flips and rotations, elastic deformation",
        training_batch_size=config.batch_size, initial_learning_rate=config.lr, optimizer=config.optimizer,
        learning_rate_schedule=config.lr_decay, loss_function="weighted softmax cross-entropy (the paper's weight map)",
        loss_function_kwargs={"w0": config.w0, "sigma": config.sigma})
    return spec.ModelDescr(
        name=name, description=f"U-Net trained with unet_fast {unet_fast.__version__} ({step} steps) to segment cells",
        authors=[spec.Author(name=author) for author in authors],
        cite=[spec.CiteEntry(text=PAPER[0], doi=spec.Doi(PAPER[1]))],
        license=license, documentation=spec.FileDescr(source="documentation.md"),
        covers=[spec.FileDescr(source="cover.png")],
        tags=["unet", "segmentation", "2d", "pytorch", "unet_fast", "cells"],
        inputs=[input_tensor], outputs=[output_tensor], weights=weights,
        config=spec.Config(bioimageio=spec.BioimageioConfig(training=training),
                           unet_fast={"version": unet_fast.__version__, "step": step,
                                      "depth": geometry.depth, "stages": geometry.stages,
                                      "training": _plain(config.as_dict())}),
    )


def _plain(values: dict) -> dict:
    """Plain YAML values: tuples as lists, non-finite floats as strings."""
    plain = {}
    for key, value in values.items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        plain[key] = value
    return plain


def _save_and_validate(description, path: Path) -> Path:
    """Writes ``rdf.yaml`` and reads it back through bioimageio.spec: a package that would not
    load in the consumers raises here, naming what is wrong."""
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_yaml_only

    with files.atomic_path(path) as temporary:
        save_bioimageio_yaml_only(description, file=temporary)
    loaded = load_description(path, perform_io_checks=True)
    if isinstance(loaded, InvalidDescr):
        raise RuntimeError(f"the bioimage.io description in {path} does not validate:\n{loaded.validation_summary}")
    return path
