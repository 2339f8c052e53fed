"""Lesion measures against the phantom truth (continuous shapes, not voxels).

Tolerances (README "Lesions"): length +-2 mm, volume +-15 %, tissue bridges +-1 mm, levels
exact on 1 mm whole-spine phantoms; the same numbers across voxel orders and an oblique grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_app.lesions.measures import COLUMNS, measure_lesions
from bids_app.phantom.anatomy import Lesion
from bids_app.phantom.lesions import lesion_truth
from bids_app.phantom.render import Acquisition, render_phantom

LESIONS = (
    Lesion("C4", 14.0, 3.5),
    Lesion("T2", 22.0, 4.0, offset=0.8, position=0.3),
    Lesion("T7", 9.0, 3.0, offset=-0.6),
)
TOL_MM = {"length_mm": 2.0, "midsagittal_length_mm": 2.0}
TOL_BRIDGE = 1.0
BRIDGES = ("ventral_bridge_mm", "dorsal_bridge_mm", "total_bridge_mm")


def _measure(ph):
    return measure_lesions(
        np.asarray(ph.lesions.dataobj), np.asarray(ph.labels.dataobj), ph.image.affine
    )


@pytest.fixture(scope="module")
def whole():
    return render_phantom(21, Acquisition(fov="whole", lr_extent=40.0), lesions=LESIONS)


def _check_against_truth(rows, anat):
    assert len(rows) == len(anat.lesions)
    for i, row in enumerate(rows):
        truth = lesion_truth(anat, i)
        where = f"lesion {i + 1} at {anat.lesions[i].level}"
        assert row["volume_mm3"] == pytest.approx(truth["volume_mm3"], rel=0.15), where
        for key, tol in TOL_MM.items():
            assert abs(row[key] - truth[key]) <= tol, f"{where}: {key} {row[key]} vs {truth}"
        for key in BRIDGES:
            assert abs(row[key] - truth[key]) <= TOL_BRIDGE, f"{where}: {key} {row[key]}"
        assert row["levels"] == truth["levels"], where
        main = max(row["level_shares"].split(","), key=lambda x: float(x.split(":")[1]))
        assert main.split(":")[0] == truth["level_main"], where
        assert row["outside_cord_share"] == 0.0
        assert row["touches_fov_edge"] == 0


def test_measures_match_truth_on_whole_spine(whole):
    report = _measure(whole)
    _check_against_truth(report.rows, whole.anatomy)
    assert list(report.rows[0]) == list(COLUMNS)
    # The numbered mask keeps every lesion voxel, superior lesion first.
    ids = report.ids
    assert ids is not None and set(np.unique(ids)) == {0, 1, 2, 3}
    assert (ids > 0).sum() == (np.asarray(whole.lesions.dataobj) > 0).sum()
    # Lesion load per level: the per-level volumes add up to the lesion volumes.
    total = sum(r["volume_mm3"] for r in report.rows)
    assert sum(r["lesion_volume_mm3"] for r in report.load) == pytest.approx(total)
    assert [r["level"] for r in report.load][:1] == ["C4"]
    assert all(0 < r["lesion_load"] < 1 for r in report.load)


@pytest.mark.parametrize(
    "acq",
    [
        Acquisition(fov="cervicothoracic", axcodes="PSR", lr_extent=40.0),
        Acquisition(fov="cervicothoracic", axcodes="LPI", lr_extent=40.0),
        Acquisition(fov="cervicothoracic", lr_extent=40.0, oblique_deg=(6.0, 0.0, 4.0)),
    ],
    ids=["PSR", "LPI", "oblique"],
)
def test_measures_do_not_depend_on_the_grid(acq):
    lesions = LESIONS[:2]
    ref = _measure(
        render_phantom(21, Acquisition(fov="cervicothoracic", lr_extent=40.0), lesions=lesions)
    )
    ph = render_phantom(21, acq, lesions=lesions)
    rows = _measure(ph).rows
    _check_against_truth(rows, ph.anatomy)
    for mine, theirs in zip(rows, ref.rows, strict=True):  # and within tolerance of RAS
        assert mine["volume_mm3"] == pytest.approx(theirs["volume_mm3"], rel=0.15)
        assert abs(mine["length_mm"] - theirs["length_mm"]) <= TOL_MM["length_mm"]
        for key in BRIDGES:
            assert abs(mine[key] - theirs[key]) <= TOL_BRIDGE, key
        assert mine["levels"] == theirs["levels"]


def test_lesion_free_mask_gives_an_empty_report():
    ph = render_phantom(22, Acquisition(fov="cervical", lr_extent=40.0))
    report = _measure(ph)
    assert report.rows == [] and report.load == []


def test_lesion_cut_by_the_field_of_view_and_outside_the_cord():
    ph = render_phantom(21, Acquisition(fov="cervical", lr_extent=40.0), lesions=LESIONS[:1])
    lesion = np.asarray(ph.lesions.dataobj).copy()
    spine = np.asarray(ph.labels.dataobj)
    z = np.argwhere(lesion)[:, 2]
    cut = int(np.median(z))  # crop the image through the lesion's middle (z is S here)
    row = measure_lesions(lesion[:, :, :cut], spine[:, :, :cut], ph.image.affine).rows[0]
    assert row["touches_fov_edge"] == 1 and math.isnan(row["length_mm"])
    # A blob inside a disc is outside the cord and the canal.
    blob = np.zeros_like(lesion)
    body = np.argwhere(spine == 66)
    centre = body.mean(0).round().astype(int)
    blob[tuple(slice(c - 2, c + 3) for c in centre)] = 1
    row = measure_lesions(blob, spine, ph.image.affine).rows[0]
    assert row["outside_cord_share"] == 1.0


def test_lesion_preview_draws_the_lesions_in_the_legend_colour(tmp_path):
    from PIL import Image

    from bids_app.lesions.preview import LESION_COLOUR, write_preview

    ph = render_phantom(21, Acquisition(fov="cervical", lr_extent=40.0), lesions=LESIONS[:1])
    path = tmp_path / "lesion.png"
    write_preview(path, ph.image, ph.labels, ph.lesions)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert (pixels == LESION_COLOUR).all(1).sum() > 20  # contours and legend swatch
    empty = ph.lesions.__class__(np.zeros(ph.lesions.shape, np.uint8), ph.lesions.affine)
    write_preview(path, ph.image, ph.labels, empty)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert (pixels == LESION_COLOUR).all(1).sum() == 11 * 11  # the legend swatch only
