"""Large images on disk: Zarr v2/v3, OME-Zarr and (Big)TIFF read lazily as (frames, y, x);
outputs created once, refused when they exist, read back by ome-zarr-py."""

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from unet_fast import stores  # noqa: E402

IMAGE = np.arange(60 * 70, dtype=np.uint16).reshape(60, 70)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_arrays_of_either_format(tmp_path, zarr_format):
    path = tmp_path / "image.zarr"
    array = zarr.create_array(str(path), shape=IMAGE.shape, chunks=(16, 16), dtype=IMAGE.dtype, zarr_format=zarr_format)
    array[:] = IMAGE
    lazy = stores.open_image(path)
    assert (lazy.frames, lazy.height, lazy.width, lazy.dtype) == (1, 60, 70, np.uint16)
    np.testing.assert_array_equal(lazy.read(0, slice(5, 20), slice(30, 70)), IMAGE[5:20, 30:])


def test_an_ome_zarr_image_drops_its_singleton_axes(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    stack = np.stack([IMAGE, IMAGE + 1, IMAGE + 2])[:, None, None]  # t, c, z, y, x
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    write_image(stack, group, axes="tczyx", scale_factors=[2])
    lazy = stores.open_image(tmp_path / "image.ome.zarr")
    assert (lazy.frames, lazy.height, lazy.width) == (3, 60, 70)  # the full-resolution level
    np.testing.assert_array_equal(lazy.read(2, slice(0, 60), slice(0, 70)), IMAGE + 2)
    assert parse_url(str(tmp_path / "image.ome.zarr")) is not None


@pytest.mark.parametrize("layout", ["tiff", "bigtiff", "pyramid", "stack"])
def test_tiff_files_are_read_through_their_zarr_interface(tmp_path, layout):
    path = tmp_path / "image.tif"
    if layout == "pyramid":
        with tifffile.TiffWriter(path) as tiff:
            tiff.write(IMAGE, subifds=1, tile=(16, 16))
            tiff.write(IMAGE[::2, ::2], subfiletype=1, tile=(16, 16))
    elif layout == "stack":
        tifffile.imwrite(path, np.stack([IMAGE, IMAGE * 2]))
    else:
        tifffile.imwrite(path, IMAGE, bigtiff=layout == "bigtiff", tile=(16, 16))
    lazy = stores.open_image(path)
    frames = 2 if layout == "stack" else 1
    assert (lazy.frames, lazy.height, lazy.width) == (frames, 60, 70)
    np.testing.assert_array_equal(lazy.read(frames - 1, slice(10, 60), slice(3, 9)), (IMAGE * frames)[10:, 3:9])


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        stores.open_image(tmp_path / "missing.zarr")
    zarr.create_array(str(tmp_path / "four.zarr"), shape=(2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected \(y, x\) or \(frames, y, x\)"):
        stores.open_image(tmp_path / "four.zarr")
    zarr.create_array(str(tmp_path / "flags.zarr"), shape=(8, 8), dtype=bool)
    with pytest.raises(ValueError, match="holds bool values: expected integer or floating-point"):
        stores.open_image(tmp_path / "flags.zarr")
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w").create_array("raw", shape=(8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"without OME-Zarr multiscales metadata: name one of its arrays \(raw\)"):
        stores.open_image(tmp_path / "group.zarr")
    (tmp_path / "broken.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(ValueError, match="cannot read TIFF"):
        stores.open_image(tmp_path / "broken.tif")


def test_outputs_refuse_to_replace_a_store_unless_told(tmp_path):
    path = tmp_path / "labels.zarr"
    stores.create_outputs(path, (1, 40, 40), 16, probability=False, overwrite=False, resume=False)
    with pytest.raises(FileExistsError, match="exists: choose another, or pass --overwrite"):
        stores.create_outputs(path, (1, 40, 40), 16, probability=False, overwrite=False, resume=False)
    with pytest.raises(FileNotFoundError, match="--resume: .* holds no unfinished run"):
        stores.create_outputs(tmp_path / "other.zarr", (1, 40, 40), 16, probability=False, overwrite=False,
                              resume=True)
    with pytest.raises(ValueError, match="NAME.ome.zarr, NAME.zarr or NAME.tif"):
        stores.create_outputs(tmp_path / "labels.png", (1, 40, 40), 16, probability=False, overwrite=False,
                              resume=False)
    with pytest.raises(ValueError, match="--probabilities: only for an OME-Zarr"):
        stores.create_outputs(tmp_path / "p.zarr", (1, 40, 40), 16, probability=True, overwrite=False, resume=False)


def test_ome_zarr_output_is_what_ome_zarr_py_reads_as_labels(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    outputs = stores.create_outputs(tmp_path / "out.ome.zarr", (2, 40, 30), 16, probability=True, overwrite=False,
                                    resume=False)
    outputs.labels[1, :16, :16] = 7
    reader = Reader(parse_url(str(tmp_path / "out.ome.zarr")))
    nodes = {str(node).split()[0].rstrip("/").rsplit("/", 1)[-1]: node for node in reader()}
    assert {type(spec) for spec in nodes["cells"].specs} >= {Label, Multiscales}
    assert any(isinstance(spec, Labels) for spec in nodes["labels"].specs)
    labels = np.asarray(nodes["cells"].data[0])
    assert labels.shape == (2, 40, 30) and labels[1, 0, 0] == 7 and labels[0].max() == 0
    assert nodes["cells"].metadata["name"] == "cells"
