"""Vertebral bodies as a user meets them: parts beside the labels, heights and grades that
match the phantom truth, n/a with a reason where a body is not seen whole, outputs, figure,
group flags, and the phantoms that carry the truth."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_app.cli.main import main
from bids_app.phantom.anatomy import Deformity, Slip, random_anatomy
from bids_app.phantom.render import Acquisition, render, render_phantom
from bids_app.phantom.vertebrae import calibrated, column_truth, part_truth
from bids_app.qc.records import read_tsv
from bids_app.vertebrae.grades import HEIGHT_SHARES, genant, meyerding
from bids_app.vertebrae.outputs import LUT_NAME, write_vertebra_outputs
from bids_app.vertebrae.parts import BODY_PARTS, ENDPLATE_MM, PARTS, POSTERIOR_PARTS
from bids_app.vertebrae.preview import COLOURS, write_figure
from bids_app.vertebrae.qc import read_levels, vertebra_columns
from bids_app.vertebrae.run import analyse

SEED = 5000
DEFORMED = (Deformity("C4", "wedge", 2), Deformity("C6", "biconcave", 3))
SLIPS = (Slip("C3-C4", 25.0),)


def _draw(deformities: tuple[Deformity, ...]):
    return random_anatomy(SEED, deformities=deformities, slips=SLIPS)


@pytest.fixture(scope="module")
def deformed():
    anat = calibrated(_draw, DEFORMED, HEIGHT_SHARES)
    ph = render(anat, Acquisition("cervical"), noise_seed=SEED)
    return ph, column_truth(anat, HEIGHT_SHARES), analyse(ph.labels, ph.image)


def _rows(result) -> dict[str, dict]:
    return {str(r["level"]): r for r in result.measures.rows}


def test_default_phantoms_are_unchanged() -> None:
    """No deformity asked: the very phantom the demo models and tests were made with."""
    ph = render_phantom(SEED, Acquisition("cervical"))
    digest = hashlib.sha256()
    for img in (ph.image, ph.labels, ph.lesions):
        digest.update(np.asarray(img.dataobj).tobytes())
        digest.update(img.affine.tobytes())
    assert digest.hexdigest() == (
        "eb3c975fec9206f6e69876a864e7d7daefa06351f37c7e0db895a1b3fd23ff87"
    )


@pytest.mark.parametrize("shape", ["wedge", "biconcave", "crush"])
@pytest.mark.parametrize("grade", [1, 2, 3])
def test_drawn_deformities_grade_as_asked(shape: str, grade: int) -> None:
    anat = calibrated(
        lambda d: random_anatomy(SEED + grade, deformities=d),
        (Deformity("T6", shape, grade),),
        HEIGHT_SHARES,
    )
    bodies = {b["level"]: b for b in column_truth(anat, HEIGHT_SHARES)["bodies"]}
    r = bodies["T6"]["ratios"]
    _, got, got_shape = genant(
        r["anterior_posterior"], r["middle_posterior"], r["posterior_neighbour"]
    )
    assert (got, got_shape) == (grade, shape)
    for level in ("T3", "T9"):  # bodies far from it stay normal
        r = bodies[level]["ratios"]
        assert (
            genant(r["anterior_posterior"], r["middle_posterior"], r["posterior_neighbour"])[1] == 0
        )


def test_grades_and_slip_measured_on_the_labels_match_the_truth(deformed) -> None:
    _, truth, result = deformed
    rows = _rows(result)
    for body in truth["bodies"]:
        row = rows.get(body["level"])
        if row is None or row["na_reason"]:
            continue
        r = body["ratios"]
        want = genant(r["anterior_posterior"], r["middle_posterior"], r["posterior_neighbour"])
        assert (row["genant_grade"], row["deformity_shape"]) == want[1:], body["level"]
        # Within one 1 mm voxel of a 13 mm cervical body (a ratio of 0.08).
        for key in ("anterior_posterior", "middle_posterior"):
            assert abs(row[f"{key}_ratio"] - r[key]) < 0.1, (body["level"], key)
    measured = {b["level"] for b in truth["bodies"]} & {
        k for k, v in rows.items() if not v["na_reason"]
    }
    assert {"C4", "C5", "C6"} <= measured
    # Discs without a slip: no slip graded.
    for disc in ("C4-C5", "C5-C6"):
        assert abs(rows[disc]["slip_percent"]) < 10 and rows[disc]["meyerding_grade"] == "none"


def test_a_fracture_the_labels_draw_whole_is_read_on_the_image() -> None:
    """What a network that rarely saw a fracture gives: the body labelled at its normal
    height (here: the labels of the same anatomy without the deformities). Heights read on
    the labels alone grade it normal; read on the T2w image's endplates, where the disc
    filling the dish is bright, the biconcave C6 is found (grade 2 or 3, as drawn 3) and no
    normal body is flagged."""
    anat = calibrated(_draw, DEFORMED, HEIGHT_SHARES)
    acq = Acquisition("cervical", contrast="T2w")
    ph = render(anat, acq, noise_seed=SEED)
    whole = render(random_anatomy(SEED, slips=SLIPS), acq, noise_seed=SEED).labels
    on_labels = _rows(analyse(whole))
    on_image = _rows(analyse(whole, ph.image))
    assert on_labels["C6"]["genant_grade"] == 0
    assert on_image["C6"]["genant_grade"] >= 2 and on_image["C6"]["deformity_shape"] == "biconcave"
    for level in ("C3", "C5", "C7"):
        assert on_image[level]["genant_grade"] == 0, level
    # The phantom's own labels already end at the endplates: the image changes no grade.
    truth = _rows(analyse(ph.labels))
    read = _rows(analyse(ph.labels, ph.image))
    grades = {
        k: (truth[k]["genant_grade"], read[k]["genant_grade"])
        for k in ("C3", "C4", "C5", "C6", "C7")
    }
    assert all(a == b for a, b in grades.values()), grades


def test_slip_measured_within_10_points(deformed) -> None:
    """A slip next to a wedged body (its tilted endplate tilts the frame) still reads its
    size, not a share of it."""
    _, truth, result = deformed
    row = _rows(result)["C3-C4"]
    true_slip = next(d for d in truth["discs"] if d["disc"] == "C3-C4")["slip_percent"]
    assert abs(row["slip_percent"] - true_slip) < 10


@pytest.mark.parametrize(
    ("fov", "slips"),
    [
        ("lumbar", {"L1-L2": 15.0, "L3-L4": 35.0, "L5-S": 30.0}),  # L5-S: on S1's endplate
        ("thoracic", {"T4-T5": 30.0, "T8-T9": 20.0}),
    ],
)
def test_slips_of_every_size_are_measured_not_shrunk(fov: str, slips: dict[str, float]) -> None:
    """Each drawn slip within 5 points and graded as drawn (a sheared disc once pulled the
    posterior walls toward each other, by a share of the slip); unslipped discs stay under
    the grading threshold."""
    anat = random_anatomy(SEED, slips=tuple(Slip(d, p) for d, p in slips.items()))
    ph = render(anat, Acquisition(fov), noise_seed=SEED)
    truth = {d["disc"]: d["slip_percent"] for d in column_truth(anat, HEIGHT_SHARES)["discs"]}
    rows = _rows(analyse(ph.labels, ph.image))
    measured = [r for r in rows.values() if r["structure"] == "disc" and not r["na_reason"]]
    assert set(slips) <= {r["level"] for r in measured}
    for row in measured:
        want = truth[row["level"]]
        if row["level"] in slips:
            assert abs(row["slip_percent"] - want) < 5, (row["level"], row["slip_percent"], want)
            assert row["meyerding_grade"] == meyerding(want), row["level"]
        else:
            assert row["meyerding_grade"] == "none", (row["level"], row["slip_percent"])


def test_every_vertebra_voxel_has_a_part(deformed) -> None:
    ph, _, result = deformed
    labels = np.asarray(ph.labels.dataobj)
    parts = np.asarray(result.parts.dataobj)
    bone = np.isin(labels, [*range(11, 47), 50])
    assert result.parts.shape == ph.labels.shape
    assert np.allclose(result.parts.affine, ph.labels.affine)
    assert (parts[bone] > 0).all() and (parts[~bone] == 0).all()
    assert set(np.unique(parts[bone])) <= set(PARTS.values())
    truth = np.asarray(part_truth(ph, PARTS, ENDPLATE_MM).dataobj)
    for group in (BODY_PARTS, POSTERIOR_PARTS):
        a, b = np.isin(parts, group), np.isin(truth, group)
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_parts_hold_when_the_discs_are_labelled_narrower_than_the_bodies(deformed) -> None:
    """A network labels its discs narrower than its bodies (the demo models by 1-3 mm): the
    body keeps its front and sides, only the footprint's posterior edge cuts."""
    ph, _, _ = deformed
    labels = np.asarray(ph.labels.dataobj).copy()
    assert nib.aff2axcodes(ph.labels.affine) == ("R", "A", "S")
    discs = labels >= 60
    # 2 mm off each disc's left, right and front (1 mm voxels), left as background.
    narrow = discs.copy()
    for axis, shift in ((0, 2), (0, -2), (1, -2)):
        narrow &= np.roll(discs, shift, axis=axis)
    labels[discs & ~narrow] = 0
    parts = np.asarray(analyse(nib.Nifti1Image(labels, ph.labels.affine)).parts.dataobj)
    truth = np.asarray(part_truth(ph, PARTS, ENDPLATE_MM).dataobj)
    for group in (BODY_PARTS, POSTERIOR_PARTS):
        a, b = np.isin(parts, group), np.isin(truth, group)
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.93, group


def test_bodies_not_seen_whole_are_na_with_a_reason(deformed) -> None:
    _, _, result = deformed
    rows = _rows(result)
    assert "no vertebral body" in rows["C1"]["na_reason"]
    assert "dens" in rows["C2"]["na_reason"]
    # A slip next to C2 is n/a with C2's reason, the level named once.
    assert rows["C2-C3"]["na_reason"] == rows["C2"]["na_reason"]
    assert rows["C2-C3"]["na_reason"].startswith("C2: ")
    # The cervical field of view ends in T2: the last bodies are cut or lack a disc.
    last = [r for r in result.measures.rows if r["structure"] == "vertebra"][-1]
    assert last["na_reason"] and math.isnan(last["posterior_height_mm"])


def test_thick_slices_give_na() -> None:
    ph = render_phantom(SEED, Acquisition("cervical", voxel="ax4", lr_extent=80.0))
    rows = analyse(ph.labels, ph.image).measures.rows
    graded = [r for r in rows if r["structure"] == "vertebra" and not r["na_reason"]]
    assert not graded
    assert any("thick slices" in str(r["na_reason"]) for r in rows)


def test_transitional_lumbar_vertebra_is_na() -> None:
    ph = render_phantom(SEED, Acquisition("lumbar"), n_lumbar=6)
    rows = {r["level"]: r for r in analyse(ph.labels, ph.image).measures.rows}
    assert "transitional" in str(rows["L6"]["na_reason"])


def test_outputs_sidecars_figure_and_group_flags(deformed, tmp_path: Path) -> None:
    ph, _, result = deformed
    rel = "sub-01/anat/sub-01_acq-sag_T2w.nii.gz"
    written = write_vertebra_outputs(tmp_path, rel, "T2w", result, sources=[f"bids:raw:{rel}"])
    assert written == [
        "sub-01/anat/sub-01_acq-sag_seg-vertparts_desc-T2w_dseg.nii.gz",
        "sub-01/anat/sub-01_acq-sag_seg-vertparts_desc-T2w_dseg.json",
        "sub-01/anat/sub-01_acq-sag_seg-vertparts_desc-T2w_morphometry.tsv",
        "sub-01/anat/sub-01_acq-sag_seg-vertparts_desc-T2w_morphometry.json",
    ]
    lut = (tmp_path / LUT_NAME).read_text().splitlines()
    assert lut[0] == "index\tname\tabbreviation\tcolor" and len(lut) == 1 + len(PARTS)
    sidecar = json.loads((tmp_path / written[3]).read_text())
    assert sidecar["anterior_height_mm"]["Units"] == "mm"
    assert sidecar["slip_percent"]["Units"] == "%"
    rows = read_tsv(tmp_path / written[2])
    assert [r["level"] for r in rows if r["genant_grade"] == 2] == ["C4"]
    stamp = {"outputs": written}
    columns, reasons = vertebra_columns(read_levels(tmp_path, stamp))
    assert (
        columns["flag_possible_fracture"] == 1
        and "C4 (grade 2 wedge)" in reasons["possible_fracture"]
    )
    assert "C6 (grade 3 biconcave)" in str(columns["possible_fracture_levels"])
    figure = tmp_path / "bodies.png"
    assert write_figure(figure, ph.image, result.measures)
    pixels = np.asarray(Image.open(figure).convert("RGB"))
    for name in ("anterior", "middle", "posterior", "slip"):
        assert (pixels == COLOURS[name]).all(-1).sum() > 20, name


def test_phantoms_subcommand_writes_body_truth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ph"
    rc = main(
        ["phantoms", str(out), "--subjects", "1", "--deformity", "C5:crush:2", "--slip", "C3-C4:30"]
    )
    assert rc == 0
    jsons = sorted(
        out.glob("derivatives/truth/sub-01/ses-01/anat/*_seg-truthvertparts_*_dseg.json")
    )
    assert jsons and sorted(out.glob("derivatives/truth/**/*truthvertparts*_dseg.nii.gz"))
    truth = json.loads(jsons[0].read_text())
    c5 = next(b for b in truth["Bodies"] if b["level"] == "C5")
    assert (c5["shape"], c5["grade"], c5["in_field_of_view"]) == ("crush", 2, True)
    assert abs(next(d for d in truth["Discs"] if d["disc"] == "C3-C4")["slip_percent"] - 30) < 3
    rc = main(["phantoms", str(tmp_path / "bad"), "--deformity", "C5:squash:2"])
    assert rc == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert "C5:squash:2" in err[-1] and "Traceback" not in "\n".join(err)


def test_stage_writes_beside_the_spine_outputs_and_never_costs_them(
    deformed, tmp_path: Path
) -> None:
    from bids_app.bids.discovery import ImageJob
    from bids_app.engine.options import SegmentOptions
    from bids_app.engine.result import EngineResult
    from bids_app.run.stages.base import Segmented
    from bids_app.run.stages.vertebrae import VertebraStage

    ph, _, _ = deformed
    rel = "sub-01/anat/sub-01_acq-sag_T2w.nii.gz"
    job = ImageJob("01", None, tmp_path / rel, "T2w", {}, relpath=rel)
    result = EngineResult(device="cpu")
    result.native = {"final": ph.labels}
    done = VertebraStage(tmp_path).run(Segmented(job, SegmentOptions(), ph.image, result), [])
    assert done.problem is None
    assert "sub-01/figures/sub-01_acq-sag_seg-vertparts_desc-T2w_bodies.png" in done.outputs
    assert all((tmp_path / p).is_file() for p in done.outputs)
    # No final labels (levels refused): nothing to measure, nothing wrong.
    result.native = {}
    assert VertebraStage(tmp_path).run(Segmented(job, SegmentOptions(), ph.image, result), []) == (
        type(done)()
    )
    # Labels the analysis cannot read: the image is partial, with the reason.
    result.native = {"final": nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.uint8), np.eye(4))}
    broken = VertebraStage(tmp_path).run(Segmented(job, SegmentOptions(), ph.image, result), [])
    assert broken.outputs == [] and str(broken.problem).startswith("vertebral bodies:")


def test_report_section_names_the_possible_fractures_next_to_the_figure(
    deformed, tmp_path: Path
) -> None:
    from bids_app.vertebrae.preview import report_section

    ph, _, result = deformed
    rel = "sub-01/anat/sub-01_acq-sag_T2w.nii.gz"
    written = write_vertebra_outputs(tmp_path, rel, "T2w", result, sources=[f"bids:raw:{rel}"])
    figure = "sub-01/figures/sub-01_acq-sag_seg-vertparts_desc-T2w_bodies.png"
    assert write_figure(tmp_path / figure, ph.image, result.measures)
    section = report_section(tmp_path, {"outputs": [*written, figure]})
    assert section is not None
    assert section["possible_fracture"] == ["C4", "C6"]
    assert section["figure"]["src"].endswith("_bodies.png")
    grade = section["headers"].index("Genant grade")
    assert [r[grade] for r in section["rows"] if r[0] == "C4"] == ["2"]
    assert report_section(tmp_path, {"outputs": []}) is None
