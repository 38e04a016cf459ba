#!/usr/bin/env python3
"""Trains the same U-Net with several recipes on each synthetic modality and prints, per run,
the loss's course, whether it diverged, and the held-out scores (IoU, AP50 with the watershed):
the runs behind the choice of `unet-fast train`'s defaults (docs/training.md).

    python tools/compare_recipes.py --steps 100 --widths 64,128,256,512,1024 --tile 252 --out /tmp/recipes
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

from unet_fast import data, metrics
from unet_fast.checkpoint import TrainConfig, load_model
from unet_fast.predict import segment
from unet_fast.training import SYNTHETIC, TrainingDiverged, train

RECIPES = {
    "paper": {},  # TrainConfig's defaults: SGD 0.01, momentum 0.99, tiles anywhere
    "adam-cosine": {"optimizer": "adam", "lr": 1e-3, "lr_decay": "cosine"},
    "adam-cosine-objects": {"optimizer": "adam", "lr": 1e-3, "lr_decay": "cosine", "object_tiles": 0.5},
    "adam-warmup-cosine": {"optimizer": "adam", "lr": 1e-3, "lr_decay": "cosine", "warmup_steps": 20},
    "adam-warmup-cosine-objects": {"optimizer": "adam", "lr": 1e-3, "lr_decay": "cosine", "warmup_steps": 20,
                                   "object_tiles": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--tile", type=int, default=252)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    print(f"{'data':16s} {'recipe':22s} {'s':>5s} {'first loss':>10s} {'last 10':>8s} {'recovered':>9s} "
          f"{'IoU':>6s} {'AP50':>6s}")
    for data_name, style in SYNTHETIC.items():
        test = data.synthetic_cells(512, 512, seed=4242, style=style)
        for recipe in args.recipes.split(","):
            config = dataclasses.replace(TrainConfig(data=data_name, steps=args.steps, widths=widths, tile=args.tile,
                                                     val_every=0, checkpoint_every=0, synthetic_images=8,
                                                     synthetic_size=512), **RECIPES[recipe])
            start = time.perf_counter()
            try:
                history = train(config, args.out / f"{data_name}-{recipe}")
            except TrainingDiverged as error:
                print(f"{data_name:16s} {recipe:22s} diverged: {error}")
                continue
            seconds = time.perf_counter() - start
            labels = segment(load_model(args.out / f"{data_name}-{recipe}" / "model.pt"), test.image, tile=args.tile)
            losses = history["loss"]
            last = sum(losses[-10:]) / len(losses[-10:])
            print(f"{data_name:16s} {recipe:22s} {seconds:5.0f} {losses[0]:10.4f} {last:8.4f} "
                  f"{len(history['recoveries']):9d} {metrics.iou(labels, test.labels):6.3f} "
                  f"{metrics.average_precision(labels, test.labels, (0.5,))[0.5]:6.3f}", flush=True)
            assert all(math.isfinite(loss) for loss in losses)


if __name__ == "__main__":
    main()
