"""Issue 32 at group level, as a user meets it: a derivatives folder with a fractured and
slipped phantom and a normal one, each with the vertebral-body outputs the participant level
writes; the group level's long and wide tables, their sidecars, group_qc.tsv, the work list
and the subject report; and a cohort without any vertebral-body output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from qc_helpers import add_image

from bids_app.bids.stamps import read_stamp, write_stamp
from bids_app.phantom.anatomy import Deformity, Slip, random_anatomy
from bids_app.phantom.render import Acquisition, Phantom, render
from bids_app.phantom.vertebrae import calibrated
from bids_app.qc import run_group, write_subject_report
from bids_app.qc.group import wide_columns
from bids_app.qc.worklist import review
from bids_app.vertebrae.grades import HEIGHT_SHARES
from bids_app.vertebrae.outputs import write_vertebra_outputs
from bids_app.vertebrae.qc import REASON_COLUMNS, measures
from bids_app.vertebrae.run import analyse

SEED = 5001
FRACTURE = Deformity("C5", "wedge", 2)
SLIP = Slip("C3-C4", 40.0)
BODY = [c.name for c in measures() if "vertebra" in c.structures]
DISC = [c.name for c in measures() if "disc" in c.structures]


def _tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def _with_bodies(out: Path, bids: Path, phantom: Phantom, sub: str) -> str:
    """One image as the participant level leaves it: spine outputs and QC, then the
    vertebral-body outputs measured on its labels, all listed in its stamp."""
    key = add_image(out, bids, phantom, sub, None)
    stamp_file = out / "logs/status" / f"{key}.json"
    stamp = read_stamp(stamp_file)
    assert stamp is not None
    source = str(stamp["source"])
    written = write_vertebra_outputs(
        out, source, "T2w", analyse(phantom.labels), sources=[f"bids:raw:{source}"]
    )
    write_stamp(stamp_file, {**stamp, "outputs": [*stamp["outputs"], *written]})
    write_subject_report(out, sub)
    return key


@pytest.fixture(scope="module")
def cohort(cervical, tmp_path_factory):
    """sub-01: a cervical phantom with C5 wedged (Genant 2) and C3 slipped over C4;
    sub-02: the normal cervical phantom. Group level run once."""
    anat = calibrated(
        lambda d: random_anatomy(SEED, deformities=d, slips=(SLIP,)), (FRACTURE,), HEIGHT_SHARES
    )
    fractured = render(anat, Acquisition("cervical"), noise_seed=SEED)
    base = tmp_path_factory.mktemp("bodies")
    out, bids = base / "out", base / "bids"
    keys = {
        "fractured": _with_bodies(out, bids, fractured, "01"),
        "normal": _with_bodies(out, bids, cervical, "02"),
    }
    run_group(out)
    return out, bids, keys


def _per_image(out: Path, sub: str) -> dict[str, dict[str, str]]:
    (table,) = out.glob(f"sub-{sub}/anat/*_seg-vertparts_desc-T2w_morphometry.tsv")
    return {r["level"]: r for r in _tsv(table)[1]}


def test_wide_table_has_every_level_measure_with_its_reason(cohort):
    out, _, keys = cohort
    header, rows = _tsv(out / "group_morphometry_wide.tsv")
    assert header == wide_columns()
    for level in ("C1", "C5", "L6"):  # fixed: every vertebra, measured or not, seen or not
        assert {f"{level}_{m}" for m in (*BODY, REASON_COLUMNS["vertebra"])} <= set(header)
    for disc in ("C3-C4", "L5-S"):
        assert {f"{disc}_{m}" for m in (*DISC, REASON_COLUMNS["disc"])} <= set(header)
    assert "C5_slip_mm" not in header and "C3-C4_genant_grade" not in header
    by_image = {r["image"]: r for r in rows}
    for name, sub in (("fractured", "01"), ("normal", "02")):
        row, per_image = by_image[keys[name]], _per_image(out, sub)
        # Every value is the per-image table's, cell for cell.
        for level, cells in per_image.items():
            for m in BODY if cells["structure"] == "vertebra" else DISC:
                assert row[f"{level}_{m}"] == cells[m], (name, level, m)
    fractured, normal = by_image[keys["fractured"]], by_image[keys["normal"]]
    assert (fractured["C5_genant_grade"], fractured["C5_deformity_shape"]) == ("2", "wedge")
    assert float(fractured["C5_anterior_posterior_ratio"]) < 0.8
    assert float(fractured["C5_anterior_height_mm"]) < float(fractured["C5_posterior_height_mm"])
    assert fractured["C5_body_na_reason"] == "n/a"
    assert fractured["C3-C4_meyerding_grade"] in ("I", "II", "III")
    assert float(fractured["C3-C4_slip_percent"]) >= 10
    assert {normal[f"{v}_genant_grade"] for v in ("C3", "C4", "C5", "C6", "C7")} == {"0"}
    assert normal["C3-C4_meyerding_grade"] == "none"
    # n/a with the reason the per-image table gives.
    assert normal["C1_genant_grade"] == "n/a" and "no vertebral body" in normal["C1_body_na_reason"]
    assert normal["C2_anterior_height_mm"] == "n/a" and "dens" in normal["C2_body_na_reason"]
    assert "dens" in normal["C2-C3_slip_na_reason"] and normal["C2-C3_slip_percent"] == "n/a"
    assert "not seen whole" in normal["T2_body_na_reason"]
    assert normal["L3_genant_grade"] == normal["L3_body_na_reason"] == "n/a"  # not in the image


def test_long_table_rows_units_and_reasons(cohort):
    out, _, keys = cohort
    header, rows = _tsv(out / "group_morphometry_long.tsv")
    assert header[-1] == "na_reason"
    body = [r for r in rows if r["image"] == keys["fractured"] and r["measure"] in BODY + DISC]
    per_image = _per_image(out, "01")
    # One row per level of the per-image table and measure, n/a ones included.
    assert len(body) == sum(
        len(BODY if r["structure"] == "vertebra" else DISC) for r in per_image.values()
    )
    cell = {(r["abbreviation"], r["measure"]): r for r in body}
    c5 = cell["C5", "genant_grade"]
    assert (c5["value"], c5["units"], c5["structure"], c5["index"]) == (
        "2",
        "n/a",
        "vertebra",
        "15",
    )
    assert cell["C5", "deformity_shape"]["value"] == "wedge"
    assert cell["C5", "anterior_height_mm"]["units"] == "mm"
    assert cell["C3-C4", "slip_percent"]["units"] == "%"
    assert cell["C3-C4", "slip_mm"]["units"] == "mm"
    assert cell["C3-C4", "meyerding_grade"]["value"] == per_image["C3-C4"]["meyerding_grade"]
    assert {r["na_reason"] for r in body if r["value"] != "n/a"} == {"n/a"}
    c2 = cell["C2", "genant_grade"]
    assert c2["value"] == "n/a" and "dens" in c2["na_reason"]
    # The other measures keep their shape: a row only when measured, no reason.
    assert {r["na_reason"] for r in rows if r["measure"] == "volume_mm3"} == {"n/a"}


def test_sidecars_give_units_levels_and_descriptions(cohort):
    out, _, _ = cohort
    wide = json.loads((out / "group_morphometry_wide.json").read_text())
    header, _ = _tsv(out / "group_morphometry_wide.tsv")
    assert set(wide) == set(header)
    assert wide["C5_anterior_height_mm"]["Units"] == "mm"
    assert wide["L4-L5_slip_percent"]["Units"] == "%"
    assert wide["L4-L5_slip_mm"]["Units"] == "mm"
    assert "Units" not in wide["C5_anterior_posterior_ratio"]
    assert "wedge" in wide["C5_anterior_posterior_ratio"]["Description"]
    assert set(wide["C5_genant_grade"]["Levels"]) == {"0", "1", "2", "3"}
    assert "Genant 1993" in wide["C5_genant_grade"]["Description"]
    assert {"none", "I", "V"} <= set(wide["L5-S_meyerding_grade"]["Levels"])
    assert "n/a" in wide["C2_body_na_reason"]["Description"]
    long = json.loads((out / "group_morphometry_long.json").read_text())
    assert {*BODY, *DISC} <= set(long["measure"]["Levels"])
    assert "na_reason" in long
    per_image = json.loads(
        next(out.glob("sub-01/anat/*_seg-vertparts_desc-T2w_morphometry.json")).read_text()
    )
    assert per_image["meyerding_grade"]["Levels"] == wide["L5-S_meyerding_grade"]["Levels"]


def test_flags_in_group_qc_work_list_and_subject_report(cohort):
    out, bids, keys = cohort
    per_image = _per_image(out, "01")
    slip = per_image["C3-C4"]
    slip_text = f"C3-C4 ({slip['meyerding_grade']}, {float(slip['slip_percent']):.0f} %)"
    _, qc = _tsv(out / "group_qc.tsv")
    by_image = {r["image"]: r for r in qc}
    fractured, normal = by_image[keys["fractured"]], by_image[keys["normal"]]
    assert (fractured["flag_possible_fracture"], fractured["flag_listhesis"]) == ("1", "1")
    assert fractured["possible_fracture_levels"] == "C5 (grade 2 wedge)"
    assert fractured["listhesis_levels"] == slip_text
    assert fractured["qc_status"] == "check" and fractured["status"] == "ok"
    assert (
        "possible_fracture: vertebral height loss: C5 (grade 2 wedge)"
        in (fractured["flag_reasons"])
    )
    assert f"listhesis: slip: {slip_text}" in fractured["flag_reasons"]
    assert (normal["flag_possible_fracture"], normal["flag_listhesis"]) == ("0", "0")
    assert normal["vertebral_bodies_graded"] == "6"
    sidecar = json.loads((out / "group_qc.json").read_text())
    assert "not a diagnosis" in sidecar["flag_possible_fracture"]["Description"]

    # The work list: the fractured image, though it ran ok and nobody rated it; not the other.
    header, work = _tsv(out / "group_worklist.tsv")
    assert header[-1] == "listed_for"
    assert [r["image"] for r in work] == [keys["fractured"]]
    (row,) = work
    assert "possible_fracture: vertebral height loss: C5 (grade 2 wedge)" in row["listed_for"]
    assert f"listhesis: slip: {slip_text}" in row["listed_for"]
    assert "not a diagnosis" in row["listed_for"]
    assert {"possible_fracture", "listhesis"} <= set(row["flags"].split(","))
    lines, _ = review(out, bids, None, show=True)
    assert any(
        line.startswith(f"# {keys['fractured']}: ") and "C5 (grade 2 wedge)" in line
        for line in lines
    )

    # The subject report lists both flags with their levels and shows the status check.
    page = (out / "sub-01.html").read_text()
    assert "<strong>possible_fracture</strong>: vertebral height loss: C5 (grade 2 wedge)" in page
    assert f"<strong>listhesis</strong>: slip: {slip_text}" in page
    assert '<span class="status status-check">check</span>' in page
    assert "<strong>possible_fracture</strong>" not in (out / "sub-02.html").read_text()


def test_a_cohort_without_vertebral_bodies_has_the_same_columns(cohort, derivatives, tmp_path):
    """The phantoms' derivatives without any vertebral-body output: same wide header, every
    vertebral-body column n/a, the flags n/a, and no image listed for them."""
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    run_group(out)
    header, rows = _tsv(out / "group_morphometry_wide.tsv")
    assert header == _tsv(cohort[0] / "group_morphometry_wide.tsv")[0] == wide_columns()
    names = (*BODY, *DISC, *REASON_COLUMNS.values())
    body_columns = [c for c in header if c.partition("_")[2] in names]
    assert len(body_columns) == 25 * (len(BODY) + 1) + 24 * (len(DISC) + 1)
    assert rows and all(r[c] == "n/a" for r in rows for c in body_columns)
    _, long = _tsv(out / "group_morphometry_long.tsv")
    assert not [r for r in long if r["measure"] in names]
    qc_header, qc = _tsv(out / "group_qc.tsv")
    assert qc_header == _tsv(cohort[0] / "group_qc.tsv")[0]
    assert {r["flag_possible_fracture"] for r in qc} == {"n/a"}
    _, work = _tsv(out / "group_worklist.tsv")
    assert all("possible_fracture" not in r["listed_for"] for r in work)


def test_a_damaged_vertebral_table_does_not_stop_the_group(cohort, tmp_path):
    """A vertebral-body table cut or overwritten after the run: the group level still writes
    every table; that image's body columns and flags are n/a (not 'no fracture')."""
    out = tmp_path / "out"
    shutil.copytree(cohort[0], out)
    keys = cohort[2]
    (table,) = out.glob("sub-01/anat/*_seg-vertparts_desc-T2w_morphometry.tsv")
    table.write_text("not\ta table\nat\tall\n")
    run_group(out)
    header, rows = _tsv(out / "group_morphometry_wide.tsv")
    assert header == wide_columns()
    row = next(r for r in rows if r["image"] == keys["fractured"])
    assert row["C5_genant_grade"] == row["C5_body_na_reason"] == "n/a"
    qc = {r["image"]: r for r in _tsv(out / "group_qc.tsv")[1]}
    assert qc[keys["fractured"]]["flag_possible_fracture"] == "n/a"
    assert qc[keys["fractured"]]["vertebral_bodies_graded"] == "n/a"
    assert qc[keys["normal"]]["vertebral_bodies_graded"] == "6"
