"""Training configuration and checkpoints: everything a run needs to be rebuilt, resumed or
used for prediction, in one file written atomically."""

from __future__ import annotations

import dataclasses
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from unet_fast import files
from unet_fast.geometry import UNetGeometry
from unet_fast.unet import UNet

FORMAT = 1

# `unet-fast train --recipe`: "default", chosen by the runs in docs/training.md (the paper's SGD
# swung for 100 steps or more, and Adam at full rate from the first step blew up at step 2),
# and "paper", the U-Net paper's recipe: TrainConfig's own defaults, bit for bit.
RECIPES = {
    "default": {"optimizer": "adam", "lr": 1e-3, "lr_decay": "cosine", "warmup_steps": 20},
    "paper": {},
}


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults are the U-Net paper's recipe: one large tile per step, SGD
    with momentum 0.99, the border-weighted loss (w0 = 10, sigma = 5 pixels), elastic
    deformation with 10-pixel displacements, He-Gaussian initialisation, a ReLU after both
    convolutions of every block."""

    data: str = "synthetic"  # "synthetic", "synthetic-phase", "synthetic-nuclei" or a folder with images/ and masks/
    steps: int = 2000
    tile: int = 572  # input tile side; the loss sees its valid output
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    paper_block: bool = True
    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.01
    momentum: float = 0.99  # SGD only
    lr_decay: str = "none"  # "none" or "cosine" (to 0 at the last step)
    warmup_steps: int = 0  # steps over which the learning rate rises linearly from lr / warmup_steps
    batch_size: int = 1  # tiles per step and process
    bf16: bool = False  # torch.autocast bf16 for the network
    w0: float = 10.0
    sigma: float = 5.0
    elastic_sigma: float = 10.0
    object_tiles: float = 0.0  # share of tiles centred on an object pixel (the paper: 0, anywhere)
    val_fraction: float = 0.2  # share of a folder's images held out for validation
    val_every: int = 100  # steps between validations (0: none)
    checkpoint_every: int = 100  # steps between checkpoints (one is always written at the end)
    seed: int = 0
    synthetic_images: int = 8
    synthetic_size: int = 512
    backend: str | None = None

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_decay not in ("none", "cosine"):
            raise ValueError(f"lr_decay must be 'none' or 'cosine', got {self.lr_decay!r}")
        for name in ("steps", "batch_size", "synthetic_images", "synthetic_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: never), got {getattr(self, name)}")
        for name, positive in (("lr", True), ("sigma", True), ("w0", False), ("elastic_sigma", False)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.object_tiles <= 1:
            raise ValueError(f"object_tiles must be in [0, 1], got {self.object_tiles}")
        object.__setattr__(self, "widths", tuple(self.widths))
        self.geometry.output_size(self.tile, name="tile")

    @property
    def geometry(self) -> UNetGeometry:
        return UNetGeometry(depth=len(self.widths), stages=len(self.widths) - 1)

    def build_model(self) -> UNet:
        """The run's network: one input channel, two classes, ``widths`` from top to bottom."""
        return UNet(enc_chs=(1, *self.widths), dec_chs=self.widths[::-1], num_class=2,
                    backend=self.backend, paper_block=self.paper_block)

    def learning_rate(self, step: int) -> float:
        """The learning rate of ``step`` (0-based): a function of the step alone, so resuming
        needs no scheduler state."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        return self.lr

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def save_checkpoint(path: str | Path, *, config: TrainConfig, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int, history: dict) -> None:
    with files.atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "config": config.as_dict(), "step": step, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "history": history}, temporary)


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint as saved, with ``config`` rebuilt as a :class:`TrainConfig`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read checkpoint {path}: it is not a file torch.save wrote (damaged, or another "
                         "kind of file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a unet_fast checkpoint: it holds Python objects other than tensors and "
                         "plain data, which unet_fast does not load (unpickling them could run any code)") from None
    except Exception as error:  # zip and storage errors: a damaged file
        raise ValueError(f"cannot read checkpoint {path}: it is damaged ({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a unet_fast checkpoint (format {FORMAT})")
    try:
        checkpoint["config"] = TrainConfig(**checkpoint["config"])
    except TypeError as error:
        raise ValueError(f"{path}: its training configuration does not fit this unet_fast version ({error})") from None
    return checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> UNet:
    """The trained network of a checkpoint, in eval mode."""
    checkpoint = load_checkpoint(path)
    model = checkpoint["config"].build_model()
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
