"""A trained network in formats that run without unet_fast: TorchScript and ONNX, captured from
the plain-PyTorch form of :mod:`unet_fast.portable` with the checkpoint's weights (the fused ops
do not trace), and a bioimage.io package of both (:mod:`unet_fast.bioimage_package`).

Height and width stay free in both formats: any size the network takes (``geometry.min_size +
k * geometry.step``), any batch.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from pathlib import Path

import torch

from unet_fast import files, portable
from unet_fast.checkpoint import TrainConfig, load_checkpoint
from unet_fast.geometry import UNetGeometry

FORMATS = ("bioimageio", "torchscript", "onnx")
ONNX_OPSET = 18  # the newest the torch exporter writes natively; every runtime in use reads it
WRITES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}  # a format's file in --out


def portable_model(config: TrainConfig, state_dict: dict) -> portable.UNet:
    """The checkpoint's network in plain PyTorch, in eval mode, its tensors contiguous."""
    model = portable.UNet(**architecture_kwargs(config))
    model.load_state_dict({name: tensor.contiguous() for name, tensor in state_dict.items()})
    return model.eval()


def architecture_kwargs(config: TrainConfig) -> dict:
    """The arguments of :class:`unet_fast.portable.UNet` for a run's network (plain data)."""
    return {"enc_chs": [1, *config.widths], "dec_chs": list(config.widths[::-1]), "num_class": 2,
            "paper_block": config.paper_block}


def to_torchscript(model: portable.UNet, path: str | Path) -> Path:
    """``model`` scripted (not traced: sizes stay free) and saved at ``path``. (torch calls
    TorchScript deprecated; Fiji's deepImageJ and the bioimage.io runtimes load it still.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    with files.atomic_path(path) as temporary:
        scripted.save(str(temporary))
    return Path(path)


def to_onnx(model: portable.UNet, geometry: UNetGeometry, path: str | Path) -> Path:
    """``model`` as ONNX (opset ONNX_OPSET) at ``path``: input ``raw`` (N, 1, H, W) with N, H, W
    dynamic, output ``logits``. The network's depth and stages go into the metadata, from which
    :mod:`unet_fast.runtimes` knows which sizes it takes."""
    steps_y, steps_x = (torch.export.Dim(name, min=0, max=4096) for name in ("steps_y", "steps_x"))
    sizes = {0: torch.export.Dim("batch", min=1, max=1024), 2: geometry.step * steps_y + geometry.min_size,
             3: geometry.step * steps_x + geometry.min_size}
    example = torch.zeros(2, model.encoder.enc_blocks[0].conv1.in_channels, *[geometry.min_size + 2 * geometry.step] * 2)
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), input_names=["raw"], output_names=["logits"],
                                    dynamic_shapes={"x": sizes}, opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    proto = program.model_proto  # (a new copy at every access)
    for key, value in (("unet_fast.depth", geometry.depth), ("unet_fast.stages", geometry.stages)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    with files.atomic_path(path) as temporary:
        temporary.write_bytes(proto.SerializeToString())
    return Path(path)


@contextlib.contextmanager
def _quiet_exporter():
    """The torch ONNX exporter reports its progress and skipped torchvision ops on stdout and
    as warnings; an export that works says nothing."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export(checkpoint: str | Path, out: str | Path, format: str = "bioimageio", *, force: bool = False,
           **package: object) -> list[Path]:
    """Writes the network of ``checkpoint`` (a run folder or its model.pt) into the folder
    ``out`` as ``format``: "bioimageio" (a package with all three weight formats; ``package``
    takes :func:`unet_fast.bioimage_package.write_package`'s options), "torchscript" or "onnx".
    Refuses a non-empty ``out`` unless ``force``. Returns the files written."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if package and format != "bioimageio":
        raise ValueError(f"{', '.join(package)} describe a bioimage.io package: only for format 'bioimageio'")
    loaded = load_checkpoint(checkpoint)
    out = _empty_folder(Path(out), force)
    config = loaded["config"]
    model = portable_model(config, loaded["model"])
    if format == "torchscript":
        return [to_torchscript(model, out / WRITES["torchscript"])]
    if format == "onnx":
        require_extra("onnx", "onnxscript")
        return [to_onnx(model, config.geometry, out / WRITES["onnx"])]
    from unet_fast import bioimage_package

    return bioimage_package.write_package(loaded, model, out, **package)


def _empty_folder(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: export writes a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"--out {out} is not empty: choose an empty folder, or pass --force to replace "
                                  "what export writes there")
    out.mkdir(parents=True, exist_ok=True)
    return out


def require_extra(*modules: str) -> None:
    """Raises a clear error naming the extra that installs a missing optional dependency."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                                  "pip install 'unet_fast[export]'")


def copy_architecture(out: Path) -> Path:
    """The plain-PyTorch architecture file, copied into ``out`` for the state-dict weights."""
    target = out / "unet.py"
    with files.atomic_path(target) as temporary:
        shutil.copyfile(portable.__file__, temporary)
    return target
