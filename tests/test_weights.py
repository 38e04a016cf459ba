"""The border weight map against a brute-force computation on small images."""

import math

import numpy as np
import pytest
import torch

from unet_fast import weight_map


def brute_force(labels, w0, sigma, class_weight):
    """Every background pixel's two nearest objects, found by measuring to every object pixel."""
    h, w = labels.shape
    ys, xs = np.mgrid[:h, :w]
    objects = [np.argwhere(labels == k) for k in np.unique(labels) if k != 0]
    fg = labels > 0
    if class_weight == "balanced":
        counts = [np.sum(~fg), np.sum(fg)]
        present = sum(c > 0 for c in counts)
        per_class = [labels.size / (present * c) if c else 0.0 for c in counts]
    elif class_weight is None:
        per_class = [1.0, 1.0]
    else:
        per_class = list(class_weight)
    out = np.where(fg, per_class[1], per_class[0]).astype(np.float64)
    for y in range(h):
        for x in range(w):
            if fg[y, x] or len(objects) < 2:
                continue
            d = sorted(np.sqrt(((pts - [y, x]) ** 2).sum(1)).min() for pts in objects)
            out[y, x] += w0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return out


def random_labels(rng, shape, count):
    labels = np.zeros(shape, np.int32)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    for k in range(count):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, 6)
        labels[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = k + 1
    return labels


@pytest.mark.parametrize("count", [0, 1, 2, 5])
@pytest.mark.parametrize("class_weight", ["balanced", None, (0.5, 2.0)])
def test_matches_brute_force(count, class_weight):
    rng = np.random.default_rng(count)
    labels = random_labels(rng, (24, 31), count)
    got = weight_map(labels, w0=10.0, sigma=3.0, class_weight=class_weight)
    np.testing.assert_allclose(got, brute_force(labels, 10.0, 3.0, class_weight), rtol=1e-5, atol=10.0 * 1e-6)


def test_touching_objects_weigh_the_gap_heavily():
    labels = np.zeros((9, 11), np.int32)
    labels[:, :5] = 1
    labels[:, 6:] = 2
    got = weight_map(labels, w0=10.0, sigma=5.0, class_weight=None)
    np.testing.assert_allclose(got[:, 5], 1 + 10 * math.exp(-4 / 50), rtol=1e-6)
    assert (got[:, :5] == 1).all()


def test_batch_and_torch_input():
    rng = np.random.default_rng(7)
    batch = np.stack([random_labels(rng, (16, 16), 3) for _ in range(3)])
    got = weight_map(torch.from_numpy(batch))
    assert isinstance(got, torch.Tensor) and got.shape == (3, 16, 16) and got.dtype == torch.float32
    for i in range(3):
        np.testing.assert_allclose(got[i].numpy(), weight_map(batch[i]), rtol=0)


@pytest.mark.parametrize(
    "labels,kwargs,error,match",
    [
        (np.zeros((2, 2, 2, 2), np.int32), {}, ValueError, r"labels must be \(H, W\) or \(N, H, W\)"),
        (np.zeros((4, 4), np.float32), {}, TypeError, "integer instance labels"),
        (-np.ones((4, 4), np.int32), {}, ValueError, "labels must be >= 0"),
        (np.zeros((4, 4), np.int32), {"sigma": 0}, ValueError, "sigma must be a finite number > 0, got 0"),
        (np.zeros((4, 4), np.int32), {"sigma": float("nan")}, ValueError, "sigma must be a finite number > 0, got nan"),
        (np.zeros((4, 4), np.int32), {"w0": -1.0}, ValueError, "w0 must be a finite number >= 0"),
        (np.zeros((0, 4), np.int32), {}, ValueError, r"labels must not be empty, got shape \(0, 4\)"),
        (np.zeros((2, 0, 4), np.int32), {}, ValueError, "labels must not be empty"),
        (np.zeros((4, 4), np.int32), {"class_weight": "equal"}, ValueError, "class_weight must be"),
        (np.zeros((4, 4), np.int32), {"class_weight": (1, 2, 3)}, ValueError, r"\(background, foreground\)"),
    ],
)
def test_bad_inputs(labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        weight_map(labels, **kwargs)
