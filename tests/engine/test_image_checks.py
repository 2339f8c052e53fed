"""Input-image checks: colour, bad headers, ambiguous geometry and non-finite voxels.

Small synthetic images written to disk and loaded with nibabel, as a user's file would be.
The engine tests at the end go through `SpineSegEngine.segment` (demo models).
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.engine.image_checks import check_image
from bids_app.engine.options import SegmentOptions
from bids_app.engine.pipeline import SpineSegEngine
from bids_app.engine.result import EngineError
from bids_app.nnunet.weights import resolve_weights
from bids_app.phantom.render import Acquisition, render_phantom

RGB = "RGB/colour image: SpineSeg needs a greyscale 3D image"


def _grey(shape: tuple[int, ...] = (12, 10, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def _saved(tmp_path: Path, img: nib.Nifti1Image, fname: str = "img.nii") -> nib.Nifti1Image:
    img.to_filename(tmp_path / fname)
    return nib.load(tmp_path / fname)


def _with_raw_header(path: Path, **fields) -> nib.Nifti1Image:
    """Rewrite header fields in the file as stored, bypassing nibabel's fixes on save."""
    raw = bytearray(path.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)), check=False)
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    return nib.load(path)


def _error(img: nib.Nifti1Image, name: str = "img.nii") -> str:
    with pytest.raises(EngineError) as err:
        check_image(img, name)
    message = str(err.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    return message


# 7. Colour, complex and wrongly-shaped images ------------------------------------------


def _rgb24() -> nib.Nifti1Image:
    data = np.zeros((6, 5, 4), [("R", "u1"), ("G", "u1"), ("B", "u1")])
    data["G"] = 200
    return nib.Nifti1Image(data, np.eye(4))


def _rgba32() -> nib.Nifti1Image:
    data = np.zeros((6, 5, 4), [("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    data["R"] = 9
    return nib.Nifti1Image(data, np.eye(4))


def _colour_dim() -> nib.Nifti1Image:  # ITK-style vector image: colour on the 5th axis
    return nib.Nifti1Image(np.ones((6, 5, 4, 1, 3), np.uint8), np.eye(4))


def _rgb_intent() -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.ones((6, 5, 4, 3), np.uint8), np.eye(4))
    img.header.set_intent("rgb vector")
    return img


@pytest.mark.parametrize("make", [_rgb24, _rgba32, _colour_dim, _rgb_intent])
def test_colour_images_are_refused_in_one_line(tmp_path, make) -> None:
    assert _error(_saved(tmp_path, make())) == f"img.nii: {RGB}"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (np.ones((6, 5, 4), np.complex64), "complex-valued image (complex64)"),
        (_grey((12, 10)), "2-D image"),
        (_grey((12, 10, 1)), "single-slice image"),
        (_grey((6, 5, 4, 2, 2)), "5-D image"),
    ],
)
def test_images_that_are_not_greyscale_volumes_are_refused(tmp_path, data, problem) -> None:
    message = _error(_saved(tmp_path, nib.Nifti1Image(data, np.eye(4))))
    assert message.startswith(f"img.nii: {problem}") and "greyscale 3D" in message


def test_a_4d_series_is_averaged_with_a_warning(tmp_path) -> None:
    checked = check_image(_saved(tmp_path, nib.Nifti1Image(_grey((6, 5, 4, 3)), np.eye(4))), "x")
    assert checked.warnings == [
        "4-D image with 3 volumes: their mean was segmented (as TotalSpineSeg does); "
        "segment one volume if they differ in contrast"
    ]
    single = nib.Nifti1Image(_grey((6, 5, 4, 1)), np.eye(4))
    assert check_image(_saved(tmp_path, single, "one.nii"), "one").warnings == []


# 8. Headers that declare more than the file holds, grids beyond a body -----------------


def _declaring(tmp_path: Path, shape: tuple[int, ...], fname: str) -> Path:
    """A small int16 image whose header then claims `shape`."""
    path = tmp_path / fname
    nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)).to_filename(path)
    raw = gzip.decompress(path.read_bytes()) if fname.endswith(".gz") else path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    hdr.set_data_shape(shape)
    raw = hdr.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if fname.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("fname", ["huge.nii", "huge.nii.gz"])
def test_a_header_declaring_a_huge_shape_is_a_bad_header_not_out_of_memory(tmp_path, fname) -> None:
    img = nib.load(_declaring(tmp_path, (10000, 10000, 10000), fname))
    assert _error(img, fname) == (
        f"{fname}: header declares 10000x10000x10000 voxels (2000.00 GB) but the file holds "
        "only 128 bytes: truncated or inconsistent file"  # the 4x4x4 int16 voxels stored
    )


def test_a_truncated_gzip_is_caught_before_reading(tmp_path) -> None:
    path = tmp_path / "cut.nii.gz"
    nib.Nifti1Image(_grey((40, 40, 40)), np.eye(4)).to_filename(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _error(nib.load(path), "cut.nii.gz")
    assert "declares 40x40x40 voxels" in message and "holds only" in message


def test_whole_gzip_files_are_accepted_even_in_several_members(tmp_path) -> None:
    data = _grey((30, 20, 10))
    path = tmp_path / "ok.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))  # 2 members
    checked = check_image(nib.load(path), "ok.nii.gz")
    assert np.array_equal(np.asanyarray(checked.image.dataobj), data)
    assert checked.warnings == []


def test_a_field_of_view_beyond_a_body_is_refused(tmp_path) -> None:
    img = _saved(tmp_path, nib.Nifti1Image(_grey((100, 10, 10)), np.diag([50.0, 1, 1, 1])))
    assert _error(img).startswith(
        "img.nii: field of view 5000 x 10 x 10 mm would make a 1 mm model grid of 5000x10x10 voxels"
    )


# 9. Voxel sizes and the choice between qform and sform ---------------------------------


def _both_forms(tmp_path: Path, sform: np.ndarray, qform: np.ndarray) -> Path:
    img = nib.Nifti1Image(_grey(), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=1)
    img.to_filename(tmp_path / "img.nii")
    return tmp_path / "img.nii"


def test_zero_pixdim_with_only_a_qform_is_a_singular_grid(tmp_path) -> None:
    img = nib.Nifti1Image(_grey(), None)
    img.set_qform(np.diag([1.0, 2, 3, 1]), code=1)
    img.set_sform(None, code=0)
    img.to_filename(tmp_path / "img.nii")
    loaded = _with_raw_header(tmp_path / "img.nii", pixdim=[1, 1, 0, 3, 1, 1, 1, 1])
    assert loaded.affine[1, 1] == 1  # nibabel silently made the 0 mm voxel 1 mm
    assert _error(loaded) == (
        "img.nii: voxel size 0 in the header (pixdim[1:4] = 1 x 0 x 3) and the qform defines "
        "the grid (sform_code 0, qform_code 1 > 0): the affine is singular"
    )


def test_zero_pixdim_under_a_valid_sform_is_a_warning(tmp_path) -> None:
    path = _both_forms(tmp_path, np.diag([1.0, 2, 3, 1]), np.diag([1.0, 2, 3, 1]))
    loaded = _with_raw_header(path, pixdim=[1, 1, 0, 3, 1, 1, 1, 1])
    assert check_image(loaded, "img.nii").warnings == [
        "header voxel sizes pixdim[1:4] = 1 x 0 x 3 are not all positive: ignored; the grid "
        "comes from the sform (sform_code 1 > 0), voxel sizes 1 x 2 x 3"
    ]


def test_negative_pixdim_with_a_qform_is_a_warning(tmp_path) -> None:
    img = nib.Nifti1Image(_grey(), None)
    img.set_qform(np.diag([1.0, 2, 3, 1]), code=1)
    img.to_filename(tmp_path / "img.nii")
    loaded = _with_raw_header(tmp_path / "img.nii", pixdim=[1, 1, -2, 3, 1, 1, 1, 1])
    assert check_image(loaded, "img.nii").warnings == [
        "header voxel sizes pixdim[1:4] = 1 x -2 x 3 are not all positive: their absolute "
        "values were used; the grid comes from the qform (sform_code 0, qform_code 1 > 0), "
        "voxel sizes 1 x 2 x 3"
    ]


def test_qform_and_sform_disagreeing_is_a_warning_naming_the_sform(tmp_path) -> None:
    sform = np.diag([1.0, 1, 1, 1])
    qform = sform.copy()
    qform[:3, 3] = [0, 0, 5]  # 5 mm shift
    warnings = check_image(nib.load(_both_forms(tmp_path, sform, qform)), "img.nii").warnings
    assert warnings == [
        "qform and sform disagree by up to 5.0 mm over the image: the sform was used "
        "(sform_code 1 > 0, nibabel's rule); tools that prefer the qform place it elsewhere"
    ]
    agreeing = nib.load(_both_forms(tmp_path, sform, sform))
    assert check_image(agreeing, "img.nii").warnings == []


def test_no_qform_nor_sform_is_a_warning(tmp_path) -> None:
    img = nib.Nifti1Image(_grey(), None)
    warnings = check_image(_saved(tmp_path, img), "img.nii").warnings
    assert len(warnings) == 1 and "no sform or qform" in warnings[0]
    assert "orientation (left-right included) is unknown" in warnings[0]


def test_a_singular_sform_is_refused(tmp_path) -> None:
    sform = np.eye(4)
    sform[:3, 1] = sform[:3, 0]  # two axes along the same direction
    img = nib.Nifti1Image(_grey(), sform)
    assert _error(_saved(tmp_path, img)).startswith("img.nii: the sform is singular")


# 10. Non-finite voxels ------------------------------------------------------------------


def test_a_nan_block_is_zeroed_with_a_warning(tmp_path) -> None:
    data = _grey((20, 20, 20))
    data[2:6, 2:6, 2:6] = np.nan  # 64 voxels
    data[0, 0, 0] = np.inf
    checked = check_image(_saved(tmp_path, nib.Nifti1Image(data, np.eye(4))), "img.nii")
    assert checked.warnings == [
        "65 of 8000 voxels (0.812 %) were NaN or infinite and were set to 0"
    ]
    out = np.asanyarray(checked.image.dataobj)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.all(out[2:6, 2:6, 2:6] == 0) and out[0, 0, 0] == 0
    finite = np.isfinite(data)
    assert np.array_equal(out[finite], data[finite])
    assert np.array_equal(checked.image.affine, np.eye(4))


def test_mostly_nan_is_refused(tmp_path) -> None:
    data = _grey((20, 20, 20))
    data[:11] = np.nan
    assert _error(_saved(tmp_path, nib.Nifti1Image(data, np.eye(4)))) == (
        "img.nii: 4400 of 8000 voxels (55 %) are NaN or infinite: nothing to segment"
    )


@pytest.mark.parametrize("value", [0, 7])
def test_a_constant_image_is_refused(tmp_path, value) -> None:
    img = nib.Nifti1Image(np.full((8, 8, 8), value, np.int16), np.eye(4))
    assert _error(_saved(tmp_path, img)) == f"img.nii: image is empty (every voxel is {value})"


def test_the_caller_image_is_not_modified() -> None:
    data = _grey()
    data[0, 0, 0] = np.nan
    check_image(nib.Nifti1Image(data, np.eye(4)), "img")
    assert np.isnan(data[0, 0, 0])


# Through the engine: refusals before any model runs, warnings in the result ------------


@pytest.fixture(scope="module")
def engine() -> SpineSegEngine:
    return SpineSegEngine(resolve_weights("demo"), device="cpu")


def test_engine_refuses_colour_and_bad_headers_in_one_line(engine, tmp_path) -> None:
    rgb = _saved(tmp_path, _rgb24(), "rgb.nii.gz")
    with pytest.raises(EngineError, match=rf"^rgb\.nii\.gz: {re.escape(RGB)}$"):
        engine.segment(rgb, SegmentOptions(), name="rgb.nii.gz")
    huge = nib.load(_declaring(tmp_path, (10000, 10000, 10000), "huge.nii.gz"))
    with pytest.raises(EngineError, match=r"^huge\.nii\.gz: header declares 10000x10000x10000"):
        engine.segment(huge, SegmentOptions(), name="huge.nii.gz")
    assert engine.networks._models == {}  # refused before any model was loaded


@pytest.mark.slow
def test_engine_segments_a_nan_block_and_reports_it(engine, tmp_path) -> None:
    phantom = render_phantom(5100, Acquisition(fov="cervical", axcodes="PSR", lr_extent=48.0))
    data = np.asanyarray(phantom.image.dataobj).astype(np.float32)
    data[:4, :4, :4] = np.nan
    img = nib.Nifti1Image(data, phantom.image.affine)
    qform = phantom.image.affine.copy()
    qform[2, 3] += 3
    img.set_qform(qform, code=1)
    img.set_sform(phantom.image.affine, code=1)
    res = engine.segment(
        _saved(tmp_path, img, "nan.nii.gz"), SegmentOptions(step1_only=True), name="nan"
    )
    assert [w.split(":")[0] for w in res.warnings] == [
        "qform and sform disagree by up to 3.0 mm over the image",
        f"64 of {data.size} voxels ({100 * 64 / data.size:.3g} %) were NaN or infinite and "
        "were set to 0",
    ]
    assert res.native["step1"].shape == data.shape
    assert np.asarray(res.native["step1"].dataobj).any()
