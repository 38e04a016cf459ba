"""Blockwise segmentation: the same foreground as overlap-tile inference on the whole image,
the same partition as its connected components, whatever the blocks; resumable."""

import numpy as np
import pytest
from scipy import ndimage

zarr = pytest.importorskip("zarr")

from unet_fast import blockwise, data, stores  # noqa: E402
from unet_fast.tiling import predict_tiled  # noqa: E402


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images split the pixels alike (their ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b)) and np.array_equal(a == 0, b == 0)


def _stitched(mask: np.ndarray, block: int, tmp_path) -> np.ndarray:
    """Labels of ``mask`` (frames, H, W) through pass 1's block writes and pass 2's stitching."""
    out = tmp_path / "labels.zarr"
    outputs = stores.create_outputs(out, mask.shape, block, probability=False, overwrite=False, resume=False)
    job = blockwise.Job("unused", "unused", str(out), mask.shape, block, 44, 1, False, (), None)
    blocks = blockwise.block_grid(mask.shape, block)
    for f, y, x in blocks:
        blockwise.write_block(job, (f, y, x), mask[f, y:y + block, x:x + block])
    tables = blockwise.relabelling_tables(job, outputs.state, blocks)
    for b in blocks:
        blockwise.relabel_block(job, b, tables)
    labels = np.asarray(outputs.labels[:])
    blockwise._outputs.cache_clear()
    return labels


def test_stitching_gives_the_components_of_the_whole_mask(tmp_path):
    mask = np.zeros((2, 70, 90), bool)
    mask[0, 15:25, 15:25] = True  # across the corner where four 20-pixel blocks meet
    mask[0, 39, 39] = mask[0, 40, 40] = True  # diagonal neighbours across a corner: apart (4-connectivity)
    mask[0, 2:68:2, 50:88] = True  # combs: one object larger than several blocks ...
    mask[0, 2:68, 86] = True
    mask[0, 2:68, 50] = True  # ... with a tooth in every block it crosses
    rng = np.random.default_rng(0)
    mask[1] = ndimage.binary_opening(rng.random((70, 90)) > 0.45)  # crowded noise, everything across borders
    labels = _stitched(mask, 20, tmp_path)
    for frame in range(2):
        expected = ndimage.label(mask[frame])[0]
        assert same_partition(labels[frame], expected)
        assert labels[frame].max() == expected.max()  # numbered 1..K
    assert labels[0, 39, 39] != labels[0, 40, 40]


def test_an_image_smaller_than_one_block(tmp_path):
    mask = np.zeros((1, 9, 7), bool)
    mask[0, 2:5, 1:6] = mask[0, 7:, :2] = True
    np.testing.assert_array_equal(_stitched(mask, 64, tmp_path), ndimage.label(mask[0])[0][None])


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def large_image(large_cells):
    return large_cells


def _whole_image_components(run, image):
    """The components of overlap-tile inference on the whole image, normalised by the
    percentiles blockwise computes (np.percentile's float32 arithmetic can differ in the last
    bit, which flips the odd pixel where a barely trained network is undecided)."""
    frame = stores.LazyImage(image[None], 1, *image.shape, image.dtype, False, "image")
    low, high = blockwise.frame_range(frame, 0)
    normalised = ((image.astype(np.float32) - low) / max(high - low, 1e-6)).astype(np.float32)
    foreground = predict_tiled(blockwise.load_network(str(run)), normalised, tile=252, batch_size=1).argmax(0)
    return ndimage.label(foreground.numpy())[0]


def test_blockwise_equals_the_whole_image(run, large_image, tmp_path):
    path, image = large_image
    summary = blockwise.segment_large(run, path, tmp_path / "labels.ome.zarr", tile=252, block=700, batch_size=1,
                                      probability=True)
    assert summary["block"] == 636 and summary["blocks"] == 20  # 3 strides of 212
    labels = np.asarray(zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")["labels/cells/0"][0])
    expected = _whole_image_components(run, image)
    assert same_partition(labels, expected)
    crossing = np.unique(np.concatenate([labels[635:637].ravel(), labels[:, 635:637].ravel()]))
    assert len(crossing) > 10  # objects that span block borders were stitched
    probability = np.asarray(zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")["0"][0])
    # where the two logits differ by less than float32 resolves at 0.5 (~1e-7), the probability
    # is 0.5 exactly while argmax still takes a side: those pixels are ties, not disagreements
    decided = probability != 0.5
    assert decided.mean() > 0.999
    np.testing.assert_array_equal((probability > 0.5)[decided], (expected > 0)[decided])
    assert not (tmp_path / "labels.ome.zarr" / stores.STATE).exists()


def test_percentiles_read_block_by_block_are_numpys(large_image):
    _, image = large_image
    lazy = stores.open_image(large_image[0])
    np.testing.assert_allclose(blockwise.frame_range(lazy, 0, block=999),
                               np.percentile(image.astype(np.float64), blockwise.PERCENTILES), rtol=0, atol=1e-9)
    floats = stores.LazyImage(image.astype(np.float32)[None], 1, *image.shape, np.dtype(np.float32), False, "floats")
    np.testing.assert_allclose(blockwise.frame_range(floats, 0, block=999),
                               np.percentile(image.astype(np.float32), blockwise.PERCENTILES), rtol=1e-6)


def test_an_interrupted_run_resumes_without_redoing_its_blocks(run, large_image, tmp_path, monkeypatch):
    path, _ = large_image
    done = []
    original = blockwise.segment_block

    def failing_after_five(job, block):
        if len(done) == 5:
            raise KeyboardInterrupt
        original(job, block)
        done.append(block)

    monkeypatch.setattr(blockwise, "segment_block", failing_after_five)
    out = tmp_path / "labels.zarr"
    with pytest.raises(KeyboardInterrupt):
        blockwise.segment_large(run, path, out, tile=252, block=636, batch_size=1)
    with pytest.raises(FileExistsError):  # not without --resume
        blockwise.segment_large(run, path, out, tile=252, block=636, batch_size=1)
    monkeypatch.setattr(blockwise, "segment_block", lambda job, block: (done.append(block), original(job, block)))
    blockwise.segment_large(run, path, out, tile=252, block=636, batch_size=1, resume=True)
    assert len(done) == 20 and len(set(done)) == 20  # five before the interruption, fifteen after
    uninterrupted = tmp_path / "straight.zarr"
    blockwise.segment_large(run, path, uninterrupted, tile=252, block=636, batch_size=1)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], zarr.open_array(str(uninterrupted),
                                                                                          mode="r")[:])


def test_a_tiff_output_and_a_stack_of_frames(run, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    frames = np.stack([(data.synthetic_cells(300, 260, seed=s).image.clip(0, 2) * 200).astype(np.uint8)
                       for s in (1, 2)])
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    blockwise.segment_large(run, tmp_path / "stack.tif", tmp_path / "labels.tif", tile=252, block=212, batch_size=1)
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == (2, 300, 260) and labels.dtype == np.uint32
    for frame in range(2):
        assert same_partition(labels[frame], _whole_image_components(run, frames[frame]))
    assert not (tmp_path / f"labels.tif{stores.STATE}").exists()


def test_a_block_smaller_than_the_stride_is_refused(run, large_image, tmp_path):
    with pytest.raises(ValueError, match="--block 100 is smaller than one tile's stride"):
        blockwise.segment_large(run, large_image[0], tmp_path / "x.zarr", tile=252, block=100)


def test_the_input_nan_values_and_a_second_run_are_refused(run, large_image, tmp_path):
    from unet_fast.run_folder import held_lock

    path = large_image[0]
    with pytest.raises(ValueError, match="would write over or into the input"):
        blockwise.segment_large(run, path, path, tile=252, overwrite=True)
    assert stores.open_image(path).dtype == np.uint16  # untouched
    floats = np.ones((100, 90), np.float32)
    floats[5, 7] = np.nan
    zarr.create_array(str(tmp_path / "nan.zarr"), shape=floats.shape, dtype=floats.dtype)[:] = floats
    with pytest.raises(ValueError, match="nan.zarr holds NaN or infinite values"):
        blockwise.segment_large(run, tmp_path / "nan.zarr", tmp_path / "labels.zarr", tile=252)
    out = tmp_path / "busy.zarr"
    with held_lock(tmp_path / ".busy.zarr.lock", out):
        with pytest.raises(FileExistsError, match="is in use by another unet-fast run"):
            blockwise.segment_large(run, path, out, tile=252)
    assert not out.exists()
