"""Canal and cord narrowing per level, against phantoms narrowed at a known disc."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qc_helpers import canal_radii

from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L
from bids_app.qc import measures
from bids_app.qc.flags import Thresholds, image_flags
from bids_app.qc.geometry import LabelGeometry

# Tolerances over the largest errors measured on these phantoms (1 mm, 3 mm sagittal slices,
# lumbar): at the narrowed disc, ratios within 0.013 and the AP diameter within 0.22 mm;
# elsewhere |AP ratio - 1| <= 0.046, |area ratio - 1| <= 0.036; cord AP/LR within 0.08.
AP_TOL, CSA_TOL, AP_MM_TOL = 0.03, 0.03, 0.5  # at the narrowed disc
AP_EVEN, CSA_EVEN, CORD_TOL = 0.06, 0.05, 0.1  # at the other discs; cord at every disc
CASES = {
    "cervical": (3, Acquisition(fov="cervical", voxel="iso1"), "C5-C6", 0.5),
    "cervical_sag3": (3, Acquisition(fov="cervical", voxel="sag3", axcodes="PSR"), "C4-C5", 0.6),
    "lumbar": (7, Acquisition(fov="lumbar", voxel="iso1"), "L3-L4", 0.5),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def narrowed(request):
    seed, acq, disc, factor = CASES[request.param]
    ph = render_phantom(seed, acq, narrowing={disc: factor})
    geom = LabelGeometry.from_image(ph.labels)
    return ph, geom, disc, measures.measure(geom)


def _mid_s(anat, label: int) -> float:
    seg = anat.segment(label)
    return (seg.s_top + seg.s_bot) / 2


def true_ratios(anat, geom: LabelGeometry, disc: int) -> tuple[float, float, float]:
    """(AP ratio, area ratio, cord AP/LR) of the phantom's elliptic canal and cord."""
    ra, rl, ka, kl = canal_radii(anat, _mid_s(anat, disc))
    refs = [canal_radii(anat, _mid_s(anat, v)) for v in geom.neighbours(disc)]
    ap = ra / np.mean([r[0] for r in refs])
    area = ra * rl / np.mean([r[0] * r[1] for r in refs])
    return ap, area, (ka / kl if kl > 0 else math.nan)


def test_ratios_find_the_narrowed_level(narrowed):
    ph, geom, name, rows = narrowed
    checked = 0
    for row in rows:
        if row["index"] not in L.DISCS or math.isnan(row["canal_ap_ratio"]):
            continue
        ap, area, cord = true_ratios(ph.anatomy, geom, row["index"])
        if row["abbreviation"] == name:
            assert row["canal_ap_ratio"] == pytest.approx(ap, abs=AP_TOL)
            assert row["canal_csa_ratio"] == pytest.approx(area, abs=CSA_TOL)
            assert row["canal_ap_mm"] == pytest.approx(
                2 * canal_radii(ph.anatomy, _mid_s(ph.anatomy, row["index"]))[0], abs=AP_MM_TOL
            )
        else:
            assert ap == pytest.approx(1.0, abs=0.01)  # the phantom's canal is even there
            assert row["canal_ap_ratio"] == pytest.approx(1.0, abs=AP_EVEN), row["abbreviation"]
            assert row["canal_csa_ratio"] == pytest.approx(1.0, abs=CSA_EVEN), row["abbreviation"]
        if ph.acquisition.voxel == "sag3":  # 3 mm across the cord: no shape ratio
            assert math.isnan(row["cord_ap_lr_ratio"])
        elif not math.isnan(cord):
            assert row["cord_ap_lr_ratio"] == pytest.approx(cord, abs=CORD_TOL)
        checked += 1
    assert checked >= 5


def test_narrowing_is_flagged_at_its_level_only(narrowed):
    _, geom, name, rows = narrowed
    flags = {
        f["id"]: f["reason"]
        for f in image_flags(geom, (1, 1, 1), ["C2-C3"], Thresholds(), rows=rows)
    }
    assert "canal_narrowing" in flags
    assert f" {name} (AP " in flags["canal_narrowing"]
    assert flags["canal_narrowing"].count("(AP ") == 1


def test_no_narrowing_flag_on_an_even_canal(cervical, lumbar):
    for ph in (cervical, lumbar):
        geom = LabelGeometry.from_image(ph.labels)
        rows = measures.measure(geom)
        ids = [f["id"] for f in image_flags(geom, (1, 1, 1), ["C2-C3"], Thresholds(), rows=rows)]
        assert "canal_narrowing" not in ids


def test_no_ratio_without_both_adjacent_vertebrae(narrowed):
    rows = narrowed[3]
    for row in rows:
        if row["index"] not in L.DISCS:
            assert math.isnan(row["canal_ap_ratio"]) and math.isnan(row["canal_csa_ratio"])
    by_name = {r["abbreviation"]: r for r in rows}
    if "L5-S" in by_name:  # the sacrum has no mid-vertebral level
        assert math.isnan(by_name["L5-S"]["canal_ap_ratio"])


def test_narrowing_columns_reach_the_report(derivatives):
    html = (derivatives.out / "sub-01.html").read_text()
    assert "Canal AP ratio" in html and "Cord AP/LR (not validated)" in html
    assert "AP / left-right ratios come from a segmentation that was not validated" in html
