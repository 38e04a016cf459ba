"""Pictures of a training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_fast import files


def training_curve(history: dict, path: str | Path) -> None:
    """Loss per step (and its running mean) with the validation IoU on a second axis, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(history["loss"], dtype=np.float64)
    steps = np.arange(1, losses.size + 1)
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(steps, losses, color="0.75", linewidth=0.8, label="loss")
    window = max(1, losses.size // 20)
    if losses.size >= window:
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_axis.plot(steps[window - 1:], running, color="tab:blue", label=f"running mean ({window} steps)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("weighted cross-entropy")
    loss_axis.set_yscale("log")
    if history["validation"]:
        score_axis = loss_axis.twinx()
        score_axis.plot([v["step"] for v in history["validation"]], [v["iou"] for v in history["validation"]],
                        "o-", color="tab:orange", label="validation IoU")
        score_axis.set_ylabel("validation IoU")
        score_axis.set_ylim(0, 1)
        score_axis.legend(loc="lower right")
    loss_axis.legend(loc="lower left")
    figure.tight_layout()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
