"""unet-fast evaluate: predictions scored against masks file by file, frame by frame."""

import numpy as np
import pytest
import tifffile

from unet_fast import cli, evaluation, files, metrics


def _cells():
    labels = np.zeros((24, 30), np.uint16)
    labels[2:10, 2:10], labels[2:10, 12:20], labels[14:22, 4:12] = 1, 2, 3
    return labels


def _folders(tmp_path):
    pred, masks = tmp_path / "pred", tmp_path / "masks"
    pred.mkdir(), masks.mkdir()
    truth = _cells()
    merged = truth.copy()
    merged[2:10, 10:12] = 1  # the first two cells predicted as one
    merged[merged == 2] = 1
    files.write_labels(masks / "a.tif", truth)
    files.write_labels(pred / "a.tif", truth * 7)  # the same split, other ids
    tifffile.imwrite(masks / "b.tif", np.stack([truth, np.zeros_like(truth)]))
    tifffile.imwrite(pred / "b.tif", np.stack([merged, np.zeros_like(truth)]))
    files.write_rgb(pred / "a_overlay.png", np.zeros((24, 30, 3), np.uint8))  # what predict writes beside them
    return pred, masks, truth, merged


def test_each_frame_is_scored_and_empty_masks_left_out(tmp_path):
    pred, masks, truth, merged = _folders(tmp_path)
    scored, empty = evaluation.evaluate_folders(pred, masks)
    assert [name for name, _ in scored] == ["a", "b[0]"] and empty == ["b[1]"]
    assert scored[0][1]["ap50"] == scored[0][1]["seg"] == 1.0
    assert scored[1][1] == metrics.scores(merged, truth)
    assert scored[1][1]["ap50"] == pytest.approx(1 / 4)  # one match, one merged prediction, two cells missed


def test_the_command_prints_a_row_per_frame_and_the_mean(tmp_path, capsys):
    pred, masks, _, _ = _folders(tmp_path)
    cli.main(["evaluate", "--pred", str(pred), "--masks", str(masks)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(evaluation.COLUMNS)
    assert [line.split()[0] for line in lines[1:4]] == ["a", "b[0]", "mean"]
    assert float(lines[3].split()[5]) == pytest.approx((1 + 0.25) / 2, abs=1e-3)  # mean AP50
    assert lines[4].startswith("left out 1 frames whose mask holds no object: b[1]")


def _fails_with(argv, match, capsys):
    """A user's error: one line naming what is wrong, exit status 2, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and match in err.strip().splitlines()[-1], err


def test_bad_folders_and_files_are_refused_naming_them(tmp_path, capsys):
    pred, masks, truth, _ = _folders(tmp_path)
    _fails_with(["evaluate", "--pred", str(tmp_path / "nowhere"), "--masks", str(masks)], "--pred: no folder at", capsys)
    (pred / "b.tif").unlink()
    _fails_with(["evaluate", "--pred", str(pred), "--masks", str(masks)], "has no prediction for the masks b.tif", capsys)
    files.write_labels(pred / "b.tif", truth[:, :20])
    _fails_with(["evaluate", "--pred", str(pred), "--masks", str(masks)], "has shape (24, 20) but its mask", capsys)
    tifffile.imwrite(pred / "b.tif", np.stack([truth, truth]).astype(np.float32))
    _fails_with(["evaluate", "--pred", str(pred), "--masks", str(masks)], "a mask must hold integer labels", capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    files.write_labels(empty / "a.tif", np.zeros((24, 30), np.uint16))
    _fails_with(["evaluate", "--pred", str(pred), "--masks", str(empty)], "no mask holds an object to score", capsys)
