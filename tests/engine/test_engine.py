"""The engine end to end on CPU with the demo models: grids, labels, failures."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.engine.options import SegmentOptions
from bids_app.engine.pipeline import SpineSegEngine
from bids_app.engine.result import EngineError
from bids_app.nnunet.weights import resolve_weights
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L

REAL_T2 = Path(__file__).parents[1] / "data" / "sct_t2" / "t2.nii.gz"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> SpineSegEngine:
    return SpineSegEngine(resolve_weights("demo"), device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return render_phantom(5100, Acquisition(fov="cervical", axcodes="PSR", lr_extent=48.0))


@pytest.fixture(scope="module")
def mid_thoracic() -> tuple[nib.Nifti1Image, np.ndarray]:
    """A slab from below the T2-T3 disc to above T10-T11: no landmark disc in view."""
    ph = render_phantom(5100, Acquisition(fov="thoracic", axcodes="PSR", lr_extent=48.0))
    truth = np.asarray(ph.labels.dataobj)
    top, low = np.argwhere(truth == 73), np.argwhere(truth == 80)
    axis = int(np.argmax(np.abs(top.mean(0) - low.mean(0))))
    ends = sorted((top[:, axis].mean(), low[:, axis].mean()))
    first, last = (top, low) if top[:, axis].mean() == ends[0] else (low, top)
    box = [slice(None)] * 3
    box[axis] = slice(int(first[:, axis].max()) + 3, int(last[:, axis].min()) - 3)
    return ph.image.slicer[tuple(box)], truth[tuple(box)]


def _ids(img: nib.Nifti1Image) -> set[int]:
    return {int(v) for v in np.unique(np.asarray(img.dataobj))} - {0}


def test_phantom_end_to_end(engine, phantom) -> None:
    res = engine.segment(phantom.image, SegmentOptions(iso=True), name="phantom")
    assert not res.errors, res.errors
    for key in ("final", "step1", "cord_soft", "canal_soft", "levels"):
        out = res.native[key]
        assert out.shape == phantom.image.shape, key
        assert np.allclose(out.affine, phantom.image.affine), key
    final = np.asarray(res.native["final"].dataobj)
    truth = np.asarray(phantom.labels.dataobj)
    assert _ids(res.native["final"]) <= L.FINAL_IDS
    assert {L.CORD, L.CANAL} <= _ids(res.native["final"])
    cord_dice = 2 * ((final == 1) & (truth == 1)).sum() / ((final == 1).sum() + (truth == 1).sum())
    assert cord_dice > 0.6
    for level in (12, 14, 16, 64, 66):  # C2, C4, C6, C3-C4, C5-C6 at the right place
        pred, true = final == level, truth == level
        assert 2 * (pred & true).sum() / (pred.sum() + true.sum()) > 0.6, L.level_name(level)
    soft = np.asarray(res.native["cord_soft"].dataobj)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    # --iso outputs live on the 1 mm canonical grid.
    iso = res.iso["final"]
    assert nib.aff2axcodes(iso.affine) == ("R", "A", "S")
    assert np.allclose(np.sqrt((iso.affine[:3, :3] ** 2).sum(0)), 1.0)
    # The levels come from the landmark discs the networks found on this cervical image.
    assert res.landmarks["step1"] and set(res.landmarks["step1"]) <= {"C2-C3", "C7-T1"}
    assert res.landmarks["step2"] and set(res.landmarks["step2"]) <= {"C2-C3", "C7-T1"}
    assert set(res.timings) >= {"preprocess", "step1_network", "step2_network", "to_native"}


def test_without_a_landmark_cord_and_canal_still_come_out(engine, mid_thoracic) -> None:
    res = engine.segment(mid_thoracic[0], SegmentOptions(), name="phantom.nii.gz")
    assert res.errors == [
        "step 1 labeling: no landmark disc (C2-C3, C7-T1, T12-L1 or L5-S) found and no "
        "localizer given: levels cannot be assigned; use a localizer (--localizer-suffix, or "
        "--loc for `spineseg segment`) or --assume-top-disc (e.g. C2-C3 when the scan starts "
        "at C1)"
    ]
    assert "final" not in res.native and "levels" not in res.native
    assert _ids(res.native["step1"]) == {L.CORD, L.CANAL}
    assert np.asarray(res.native["cord_soft"].dataobj).max() > 0.5


def test_an_assumed_top_disc_numbers_a_field_of_view_without_landmarks(
    engine, mid_thoracic
) -> None:
    image, truth = mid_thoracic
    res = engine.segment(image, SegmentOptions(assume_top_disc=74), name="slab")  # T3-T4
    assert not res.errors, res.errors
    assert res.landmarks["step1"] == res.landmarks["step2"] == ["assumed top disc T3-T4"]
    final = np.asarray(res.native["final"].dataobj)
    top = min(v for v in _ids(res.native["final"]) if L.is_disc(v))
    assert top == 74  # the most superior disc found carries the assumed level
    # ... which is the right one here: the slab starts just below the T2-T3 disc.
    assert (
        2 * ((final == 74) & (truth == 74)).sum() / ((final == 74).sum() + (truth == 74).sum())
        > 0.5
    )


def test_models_are_loaded_once(engine, phantom) -> None:
    first = engine.networks.model("step1")
    engine.segment(phantom.image, SegmentOptions(step1_only=True))
    assert engine.networks.model("step1") is first


def test_step1_only_and_4d_input(engine, phantom) -> None:
    data = np.asanyarray(phantom.image.dataobj)
    four_d = nib.Nifti1Image(np.stack([data, data], -1), phantom.image.affine)
    res = engine.segment(four_d, SegmentOptions(step1_only=True), name="4d")
    assert "final" not in res.native
    assert res.native["step1"].shape == phantom.image.shape
    assert _ids(res.native["step1"]) <= L.FINAL_IDS


def test_real_scan_keeps_its_grid(engine) -> None:
    """A real scan (not a phantom): every output lies on the input grid and holds known labels.

    The demo models know phantoms only. On this scan step 1 finds a landmark and step 2 does
    not, so there are no final labels and the error says why; what a user checks is that the
    outputs overlay the input voxel for voxel and that the canal is there (labels and levels
    are not meaningful with demo models).
    """
    img = nib.load(REAL_T2)
    res = engine.segment(img, SegmentOptions(), name=REAL_T2.name)
    assert {"step1", "levels", "cord_soft", "canal_soft"} <= set(res.native)
    assert "final" in res.native or any("no landmark disc" in e for e in res.errors), res.errors
    for out in res.native.values():
        assert out.shape == img.shape
        assert np.allclose(out.affine, img.affine)
    for key in {"final", "step1"} & set(res.native):
        ids = _ids(res.native[key])
        assert ids <= L.FINAL_IDS
        assert L.CANAL in ids
    for key in ("cord_soft", "canal_soft"):
        soft = np.asarray(res.native[key].dataobj)
        assert soft.min() >= 0 and soft.max() <= 1
    assert np.asarray(res.native["canal_soft"].dataobj).max() > 0.5


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (np.full((20, 20, 20), np.nan, np.float32), "NaN"),
        (np.ones((20, 20), np.float32), "2-D"),
        (np.ones((8, 8, 8, 2, 2), np.float32), "5-D"),
        (np.zeros((20, 20, 20), np.int16), "empty"),
    ],
)
def test_bad_inputs_are_one_line_errors(engine, data, problem) -> None:
    img = nib.Nifti1Image(data, np.eye(4))
    with pytest.raises(EngineError) as err:
        engine.segment(img, SegmentOptions(), name="bad.nii.gz")
    assert "bad.nii.gz" in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_fast_mode_says_so_in_the_result(engine, phantom) -> None:
    res = engine.segment(phantom.image, SegmentOptions(step1_only=True, tile_step=1.0))
    fast = [w for w in res.warnings if w.startswith("fast mode")]
    assert len(fast) == 1 and "tile step 1.0" in fast[0] and "0.5" in fast[0]
    default = engine.segment(phantom.image, SegmentOptions(step1_only=True))
    assert not [w for w in default.warnings if w.startswith("fast mode")]
