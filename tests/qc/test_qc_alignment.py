"""Alignment angles against the phantom's true endplates, across grids and obliquity."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from qc_helpers import reorient, true_endplate_normal

from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L
from bids_app.qc.alignment import SAGITTAL, alignment, coronal_tilt, sagittal_tilt
from bids_app.qc.geometry import LabelGeometry

TOL = 3.0  # degrees


def true_angles(anat) -> dict[str, float]:
    """The angles the same definitions give on the phantom's continuous endplates."""
    out = {}
    for name, ((v1, d1), (v2, d2), sign) in SAGITTAL.items():
        n1 = true_endplate_normal(anat, v1, upper=L.VERTEBRA_BELOW_DISC[d1] == v1)
        n2 = true_endplate_normal(anat, v2, upper=L.VERTEBRA_BELOW_DISC[d2] == v2)
        out[name] = sign * (sagittal_tilt(n2) - sagittal_tilt(n1))
    tilts = {
        v: np.mean([coronal_tilt(true_endplate_normal(anat, v, up)) for up in (True, False)])
        for v in (*range(21, 33), *range(41, 41 + anat.n_lumbar))
    }
    out["coronal_cobb"] = max(abs(a - b) for a, b in itertools.combinations(tilts.values(), 2))
    return out


def measured(img: nib.Nifti1Image, trusted: bool = True) -> dict[str, object]:
    return alignment(LabelGeometry.from_image(img), trusted)


@pytest.fixture(scope="module")
def oblique():
    acq = Acquisition(fov="whole", axcodes="LPS", oblique_deg=(10, 6, 15))
    return render_phantom(3, acq, n_lumbar=5)


def _close(got: dict, truth: dict) -> None:
    for name in SAGITTAL:
        assert got[name] == pytest.approx(truth[name], abs=TOL), name
    assert got["coronal_cobb"]["angle_deg"] == pytest.approx(truth["coronal_cobb"], abs=TOL)


def test_whole_spine_angles_match_the_truth(whole):
    truth = true_angles(whole.anatomy)
    assert truth["cervical_lordosis_deg"] > 5 and truth["thoracic_kyphosis_deg"] > 5
    _close(measured(whole.labels), truth)


def test_angles_do_not_depend_on_voxel_order_or_obliquity(whole, oblique):
    truth = true_angles(whole.anatomy)
    base = measured(whole.labels)
    for img in (reorient(whole.labels, "PIR"), reorient(whole.labels, "LAS"), oblique.labels):
        got = measured(img)
        _close(got, truth)
        for name in SAGITTAL:
            assert got[name] == pytest.approx(base[name], abs=TOL)


def test_stronger_curves_are_measured(tmp_path):
    """A second anatomy (other seed, other curves) is within tolerance too."""
    ph = render_phantom(8, Acquisition(fov="whole", lr_extent=40.0), n_lumbar=5)
    _close(measured(ph.labels), true_angles(ph.anatomy))


def test_no_angle_without_found_levels_or_outside_the_field_of_view(whole, cervical):
    relative = measured(whole.labels, trusted=False)
    assert all(relative[k] is None for k in (*SAGITTAL, "coronal_cobb"))
    assert "relative only" in relative["note"]
    neck = measured(cervical.labels)
    assert neck["cervical_lordosis_deg"] is not None
    assert neck["thoracic_kyphosis_deg"] is None and neck["lumbar_lordosis_deg"] is None
    assert neck["coronal_cobb"] is None


def test_angles_reach_qc_json_and_the_report(derivatives):
    qc = next(derivatives.out.glob("sub-01/ses-01/anat/*_qc.json")).read_text()
    assert '"cervical_lordosis_deg": ' in qc
    html = (derivatives.out / "sub-01.html").read_text()
    assert "Cervical lordosis (C2-C7)" in html and " deg" in html


def test_curvature_figure_draws_the_true_endplates(derivatives, cervical):
    """The lines of the curvature figure, mapped back to scanner mm, lie on the phantom's
    endplates (position and tilt), and carry the angles of qc.json."""
    qc = json.loads(next(derivatives.out.glob("sub-01/ses-01/anat/*_qc.json")).read_text())
    path = derivatives.out / qc["figures"]["curvature"]
    assert path.name.endswith("_seg-spine_desc-T2w_curvature.png")
    with Image.open(path) as im:
        tags = json.loads(im.text["spineseg:tags"])
        world = json.loads(im.text["spineseg:world"])
        x0, y0 = json.loads(im.text["spineseg:image_box"])[:2]
    d = world["mm_per_pixel"]

    def to_yz(px: float, py: float) -> np.ndarray:
        return np.array([world["anterior_y_mm"] - (px - x0) * d, world["top_z_mm"] - (py - y0) * d])

    (tag,) = tags  # a cervical image: only the cervical lordosis
    assert tag["name"] == "Cervical lordosis (C2-C7)"
    assert tag["degrees"] == pytest.approx(qc["alignment"]["cervical_lordosis_deg"], abs=0.01)
    (v1, d1), (v2, d2), _ = SAGITTAL["cervical_lordosis_deg"]
    anat = cervical.anatomy
    x, y, z = anat.x_table, anat.y_table, anat.z_table
    for (vertebra, disc), line in zip(((v1, d1), (v2, d2)), tag["lines"], strict=True):
        upper = L.VERTEBRA_BELOW_DISC[disc] == vertebra
        seg = anat.segment(vertebra)
        s = seg.s_top if upper else seg.s_bot
        tangent = np.array(
            [np.interp(s, anat.s_table, np.gradient(v, anat.s_table)) for v in (x, y, z)]
        )
        # The body lies anterior to the canal across the spine axis, not along world y.
        ant = np.array([0.0, 1.0, 0.0]) - tangent[1] * tangent / (tangent @ tangent)
        centre = anat.centre_at_s(s) + anat.body_offset(seg.depth, s) * ant / np.linalg.norm(ant)
        a, b = to_yz(*line[:2]), to_yz(*line[2:])
        assert np.linalg.norm((a + b) / 2 - centre[1:]) < 1.0  # mm (0.2 measured)
        normal = true_endplate_normal(anat, vertebra, upper)
        cos = abs(float((b - a) @ normal[1:])) / np.linalg.norm(b - a) / np.linalg.norm(normal[1:])
        assert np.degrees(np.arcsin(min(cos, 1.0))) < TOL  # the line is across the normal
