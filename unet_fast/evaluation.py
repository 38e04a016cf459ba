"""Scoring label images against ground-truth masks, file by file and frame by frame:
``unet-fast evaluate --pred DIR --masks DIR``. A mask NAME.{tif,tiff,png} is scored against
the prediction of the same name (what ``unet-fast predict`` writes); other files in DIR, such
as the overlays, are left alone. Both may be instance labels or binary masks, whose connected
components are the instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_fast import data, files, metrics

COLUMNS = ("iou", "dice", "pixel_error", "rand_error", "ap50", "ap75", "ap90", "seg")


def paired_files(pred_dir: str | Path, mask_dir: str | Path) -> list[tuple[Path, Path]]:
    """(prediction, mask) for every mask, in name order."""
    pred_dir, mask_dir = Path(pred_dir), Path(mask_dir)
    for name, folder in (("--pred", pred_dir), ("--masks", mask_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name}: no folder at {folder}")
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() in data.IMAGE_SUFFIXES)
    if not masks:
        raise FileNotFoundError(f"--masks: no .tif, .tiff or .png masks in {mask_dir}")
    predictions = {p.stem: p for p in pred_dir.iterdir() if p.suffix.lower() in data.IMAGE_SUFFIXES}
    missing = [m.name for m in masks if m.stem not in predictions]
    if missing:
        raise FileNotFoundError(f"--pred {pred_dir} has no prediction for the masks {', '.join(missing[:5])}"
                                f"{' and more' if len(missing) > 5 else ''} (expected the same names)")
    return [(predictions[m.stem], m) for m in masks]


def _labels(path: Path, what: str) -> np.ndarray:
    frames = files.read_frames(path, labels=True)
    try:
        return np.stack([data.instance_labels(frame) for frame in frames])
    except ValueError as error:
        raise ValueError(f"{what} {path}: {error}") from None


def evaluate_folders(pred_dir: str | Path, mask_dir: str | Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The scores of every frame whose mask holds objects, by name, and the names of the frames
    left out because their mask holds none (their AP and SEG are undefined)."""
    scored, empty = [], []
    for prediction_path, mask_path in paired_files(pred_dir, mask_dir):
        predicted, true = _labels(prediction_path, "prediction"), _labels(mask_path, "mask")
        if predicted.shape != true.shape:
            shapes = [frames.shape[1:] if len(frames) == 1 else frames.shape for frames in (predicted, true)]
            raise ValueError(f"prediction {prediction_path} has shape {shapes[0]} but its mask {mask_path} has {shapes[1]}")
        for index, (frame_prediction, frame_mask) in enumerate(zip(predicted, true)):
            name = mask_path.stem if len(true) == 1 else f"{mask_path.stem}[{index}]"
            if not frame_mask.any():
                empty.append(name)
                continue
            scored.append((name, metrics.scores(frame_prediction, frame_mask)))
    if not scored:
        raise ValueError(f"--masks {mask_dir}: no mask holds an object to score")
    return scored, empty


def format_table(scored: list[tuple[str, dict]]) -> str:
    """One row per frame and their mean."""
    width = max(12, *(len(name) for name, _ in scored))
    lines = [f"{'':{width}s}" + "".join(f"{column:>12s}" for column in COLUMNS)]
    rows = scored + [("mean", {c: float(np.mean([s[c] for _, s in scored])) for c in COLUMNS})]
    for name, scores in rows:
        lines.append(f"{name:{width}s}" + "".join(f"{scores[column]:12.3f}" for column in COLUMNS))
    return "\n".join(lines)
