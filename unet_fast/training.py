"""Training the U-Net paper's way (:class:`~unet_fast.checkpoint.TrainConfig` holds the recipe),
in one process or data-parallel under ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl
on GPU).

Every tile a step draws (image, position, deformation, flip) comes from a random generator
seeded by (seed, step, tile index), never from state carried between steps. So a resumed run
continues exactly where it stopped, and N processes with B tiles each draw the same tiles as
one process with N x B tiles: both average the same per-tile losses.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from unet_fast import data, instances, metrics
from unet_fast.augment import elastic_deform, flip_rotate
from unet_fast.checkpoint import TrainConfig, load_checkpoint, save_checkpoint
from unet_fast.divergence import DivergenceGuard, TrainingDiverged
from unet_fast.init import init_paper_
from unet_fast.losses import WeightedSoftmaxCrossEntropyLoss
from unet_fast.run_folder import locked_run_folder
from unet_fast.tiling import mirror_window, predict_tiled
from unet_fast.weights import weight_map

# Fields that may change when a run is resumed: how long it runs and how often it reports.
RESUMABLE_CHANGES = ("steps", "val_every", "checkpoint_every")
WRITTEN = ("model.pt", "best.pt", "training_curve.png")  # what a run writes into its folder
# --data values that generate images, and their style
SYNTHETIC = {"synthetic": "fluorescence", "synthetic-phase": "phase", "synthetic-nuclei": "nuclei"}


def datasets(config: TrainConfig) -> tuple[list[data.Sample], list[data.Sample]]:
    """(training, validation) samples. Synthetic data gets validation images of its own; a
    folder gives ``val_fraction`` of its images (at least one, chosen by seed) to validation."""
    if config.data in SYNTHETIC:
        style = SYNTHETIC[config.data]
        train_set = data.synthetic_dataset(config.synthetic_images, config.synthetic_size, seed=config.seed, style=style)
        validation_count = math.ceil(config.val_fraction * config.synthetic_images) if config.val_every else 0
        return train_set, data.synthetic_dataset(validation_count, config.synthetic_size, seed=config.seed + 10**6,
                                                 style=style)
    samples = data.folder_dataset(config.data)
    if not config.val_every or config.val_fraction == 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(config.seed).permutation(len(samples))
    held_out = max(1, round(config.val_fraction * len(samples)))
    return [samples[i] for i in order[held_out:]], [samples[i] for i in order[:held_out]]


class TileSampler:
    """Draws augmented training tiles: an input window anywhere in an image (mirrored beyond
    its borders), or for a share ``object_tiles`` of them one whose output is centred on a
    random object pixel, elastically deformed and flipped/rotated together with its labels and
    weight map, whose labels and weights are then cut to the network's valid output."""

    def __init__(self, samples: list[data.Sample], config: TrainConfig):
        if not samples:
            raise ValueError("no training images")
        self.images = [torch.from_numpy(sample.image) for sample in samples]
        self.labels = [torch.from_numpy(sample.labels) for sample in samples]
        self.weights = [torch.from_numpy(weight_map(sample.labels, config.w0, config.sigma)) for sample in samples]
        self.tile = config.tile
        self.output = config.geometry.output_size(config.tile)
        self.elastic_sigma = config.elastic_sigma
        self.seed = config.seed
        self.object_tiles = config.object_tiles
        self.object_pixels = [np.flatnonzero(sample.labels) for sample in samples] if config.object_tiles else None

    def draw(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tile ``index`` of ``step``: image (1, T, T), target (O, O) int64, weights (O, O)."""
        rng = np.random.default_rng([self.seed, step, index])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        which = int(rng.integers(len(self.images)))
        height, width = self.images[which].shape
        margin = (self.tile - self.output) // 2
        top = int(rng.integers(max(height - self.output, 0) + 1)) - margin
        left = int(rng.integers(max(width - self.output, 0) + 1)) - margin
        # Drawn after everything else, so that with object_tiles 0 every tile is what it was.
        if self.object_tiles and rng.random() < self.object_tiles and len(self.object_pixels[which]):
            y, x = divmod(int(rng.choice(self.object_pixels[which])), width)
            top = min(max(y - self.output // 2, 0), max(height - self.output, 0)) - margin
            left = min(max(x - self.output // 2, 0), max(width - self.output, 0)) - margin
        windows = [mirror_window(t[which], top, left, self.tile, self.tile)
                   for t in (self.images, self.labels, self.weights)]
        image, labels, weights = elastic_deform(*windows, sigma=self.elastic_sigma, generator=generator)
        image, labels, weights = flip_rotate(image, labels, weights, generator=generator)
        valid = slice(margin, margin + self.output)
        return image[None], (labels[valid, valid] > 0).long(), weights[valid, valid].contiguous()


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = False) -> dict:
    """Trains and writes ``out_dir/model.pt`` (model, optimiser, step, config, history) every
    ``checkpoint_every`` steps and at the end, ``out_dir/best.pt`` at each validation that
    scores the best IoU so far, and ``out_dir/training_curve.png``. With
    ``resume``, continues from ``out_dir/model.pt``. Returns the history: per-step losses and
    the validation scores."""
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / "model.pt"
    rank, world, device = _start_distributed()
    with locked_run_folder(out_dir, WRITTEN) if rank == 0 else contextlib.nullcontext():
        history = _run(config, checkpoint_path, resume, progress, rank, world, device)
    if world > 1:
        # Every rank leaves together: rank 0 saves and plots after its last step, and a group
        # destroyed while a peer has already gone can hang. (After an error, nothing is
        # destroyed: torchrun stops the other ranks.)
        dist.barrier()
        dist.destroy_process_group()
    return history


def _run(config: TrainConfig, checkpoint_path: Path, resume: bool, progress: bool, rank: int, world: int,
         device: torch.device) -> dict:
    """train()'s steps, in a folder this process holds (rank 0) or a peer holds."""
    torch.manual_seed(config.seed)
    model = init_paper_(config.build_model(), torch.Generator().manual_seed(config.seed)).to(device)
    optimizer = _optimizer(config, model)
    step, history = 0, {"loss": [], "validation": []}
    if resume:
        step, history = _restore(checkpoint_path, config, model, optimizer)
    saved = step if resume else None  # the step of the checkpoint on disk
    guard = DivergenceGuard(model, optimizer, history.setdefault("recoveries", []), world)
    train_set, validation_set = datasets(config)
    sampler = TileSampler(train_set, config)
    network = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_function = WeightedSoftmaxCrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext()
    bar = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="training", unit="step",
               disable=not progress or rank != 0)
    for step in bar:
        tiles = [sampler.draw(step, rank * config.batch_size + i) for i in range(config.batch_size)]
        images, targets, weights = (torch.stack(parts).to(device) for parts in zip(*tiles))
        with autocast:
            logits = network(images)
        loss = sum(loss_function(logits[i:i + 1].float(), targets[i:i + 1], weights[i:i + 1])
                   for i in range(len(tiles))) / len(tiles)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()  # the step's one read of the loss
        if _goes_on(guard, value, step, checkpoint_path, saved):
            history["loss"].append(value)
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate(step) * guard.lr_scale
            optimizer.step()
        elif rank == 0:
            bar.write(guard.message())
        done = step + 1
        if rank == 0 and validation_set and config.val_every and (done % config.val_every == 0 or done == config.steps):
            history["validation"].append({"step": done, **validate(model, validation_set, config.tile)})
            if history["validation"][-1]["iou"] >= max(v["iou"] for v in history["validation"]):
                save_checkpoint(checkpoint_path.parent / "best.pt", config=config, model=model, optimizer=optimizer,
                                step=done, history=history)
        status = {"loss": f"{history['loss'][-1]:.4f}"}
        if history["validation"]:
            status["val_iou"] = f"{history['validation'][-1]['iou']:.3f}"
        bar.set_postfix(status, refresh=False)
        if rank == 0 and (done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)):
            save_checkpoint(checkpoint_path, config=config, model=model, optimizer=optimizer, step=done, history=history)
            saved = done
    if rank == 0:
        from unet_fast.plots import training_curve

        training_curve(history, checkpoint_path.parent / "training_curve.png")
    return history


def _goes_on(guard: DivergenceGuard, value: float, step: int, checkpoint_path: Path, saved: int | None) -> bool:
    """guard.check(), its TrainingDiverged naming the checkpoint the run leaves (the same on
    every rank)."""
    try:
        return guard.check(value, step)
    except TrainingDiverged as error:
        kept = f"the last checkpoint, of step {saved}, is {checkpoint_path}" if saved else "no checkpoint was written"
        raise TrainingDiverged(f"{error}; {kept}. A lower --lr may help.") from None


def validate(model: torch.nn.Module, samples: list[data.Sample], tile: int) -> dict[str, float]:
    """Mean IoU and Dice of the foreground, and AP50 of the cells (watershed), over ``samples``
    (overlap-tile prediction)."""
    was_training = model.training
    model.eval()
    scores = []
    for sample in samples:
        probability = instances.foreground_probability(predict_tiled(model, sample.image, tile=tile))
        foreground = probability > 0.5
        cells = instances.from_probability(probability, "watershed")
        scores.append((metrics.iou(foreground, sample.labels), metrics.dice(foreground, sample.labels),
                       metrics.average_precision(cells, sample.labels, (0.5,))[0.5]))
    model.train(was_training)
    iou, dice, ap50 = np.mean(scores, axis=0)
    return {"iou": float(iou), "dice": float(dice), "ap50": float(ap50)}


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def _restore(path: Path, config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    checkpoint = load_checkpoint(path)
    saved = checkpoint["config"].as_dict()
    changed = [name for name, value in config.as_dict().items() if saved[name] != value and name not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"cannot resume {path} with a different configuration: {', '.join(changed)} changed "
                         f"(only {', '.join(RESUMABLE_CHANGES)} may)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["step"], checkpoint["history"]


def _start_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device
