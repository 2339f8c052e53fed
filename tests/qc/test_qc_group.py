"""Group level from participant-level files only: tables, outliers, filters, missing data."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import nibabel as nib
import pytest
from qc_browser import find_chromium, load_page, page_url
from qc_helpers import stamp_for
from test_qc_report import assert_self_contained

from bids_app.bids.stamps import write_stamp
from bids_app.qc import run_group, write_subject_report
from bids_app.qc.measures import MEASURE_COLUMNS
from bids_app.qc.records import read_tsv, tsv_text

CHROMIUM = find_chromium()
OUTLIER = ("07", "C3-C4", "disc_height_mm")


def _clone(out, subject: str, factor: float) -> None:
    """Copy sub-02's participant-level files to another subject, values scaled by `factor`."""
    src_qc = json.loads(next(out.glob("sub-02/anat/*_qc.json")).read_text())
    stem = f"sub-{subject}_acq-sag"
    prefix = f"{stem}_seg-spine_desc-T2w"
    anat, figs = out / f"sub-{subject}/anat", out / f"sub-{subject}/figures"
    anat.mkdir(parents=True)
    figs.mkdir(parents=True)
    rows = read_tsv(next(out.glob("sub-02/anat/*_morphometry.tsv")))
    for row in rows:
        for m in MEASURE_COLUMNS:
            # Sizes scale with the subject; ratios do not, but vary as much between subjects.
            row[m] *= factor if not m.endswith("_ratio") else 1 + 1.5 * (factor - 1)
            if (subject, row["abbreviation"], m) == OUTLIER:
                row[m] *= 2
    columns = list(rows[0])
    (anat / f"{prefix}_morphometry.tsv").write_text(tsv_text(columns, rows))
    figures = {}
    for kind, rel in src_qc["figures"].items():
        if rel is None:  # no curvature figure without a measured angle
            figures[kind] = None
            continue
        target = figs / f"{prefix}_{kind}.png"
        shutil.copy(out / rel, target)
        figures[kind] = target.relative_to(out).as_posix()
    qc = {**src_qc, "subject": subject, "stem": stem, "figures": figures}
    # Angles differ between subjects by degrees, not in proportion to their size.
    qc["alignment"] = {
        k: v + 150 * (factor - 1) if isinstance(v, float) else v
        for k, v in src_qc["alignment"].items()
    }
    qc["morphometry"] = (anat / f"{prefix}_morphometry.tsv").relative_to(out).as_posix()
    (anat / f"{prefix}_qc.json").write_text(json.dumps(qc))
    source = f"sub-{subject}/anat/{stem}_T2w.nii.gz"
    write_stamp(out / f"logs/status/{stem}_T2w.json", stamp_for(subject, None, source, "ok", []))
    write_subject_report(out, subject)


@pytest.fixture(scope="module")
def group(derivatives, tmp_path_factory):
    """13 segmented images (sub-01 x2, sub-02, sub-03..12 cloned from sub-02) + one failure."""
    out = tmp_path_factory.mktemp("group") / "out"
    shutil.copytree(derivatives.out, out)
    for i in range(3, 13):
        _clone(out, f"{i:02d}", 1.0 + 0.02 * (i - 7))
    page = run_group(out)
    return out, page


def _tsv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_group_tables(group):
    out, page = group
    assert page == out / "group.html"
    qc = _tsv(out / "group_qc.tsv")
    assert len(qc) == 14
    by_image = {r["image"]: r for r in qc}
    failed = by_image["sub-01_ses-03_acq-sag_T2w"]
    assert failed["status"] == "failed" and "image is 2-D" in failed["reason"]
    assert failed["flag_missing_cord"] == "n/a"
    assert by_image["sub-02_acq-sag_T2w"]["flag_thick_slices"] == "1"
    assert by_image["sub-01_ses-02_acq-sag_T2w"]["levels_present"] == "T8 to S"
    assert by_image["sub-01_ses-01_acq-sag_T2w"]["session_id"] == "ses-01"

    morph = {
        p.parent.parent.name + p.name: read_tsv(p) for p in out.glob("sub-*/**/*_morphometry.tsv")
    }
    finite = sum(
        1 for rows in morph.values() for r in rows for m in MEASURE_COLUMNS if math.isfinite(r[m])
    )
    long = _tsv(out / "group_morphometry_long.tsv")
    angles = [r for r in long if r["structure"] == "spine"]
    assert len(long) == finite + len(angles)
    # One row per angle an image's qc.json gives, and only those (n/a angles have no row).
    given = {
        name
        for p in out.glob("sub-*/**/*_qc.json")
        for name, value in (json.loads(p.read_text()).get("alignment") or {}).items()
        if isinstance(value, float)
    }
    assert "lumbar_lordosis_deg" in given  # the lumbar image (T8 to S)
    assert {r["measure"] for r in angles} <= given | {"coronal_cobb_deg"}
    assert "lumbar_lordosis_deg" in {r["measure"] for r in angles}
    assert {r["units"] for r in angles} == {"deg"}
    assert {r["units"] for r in long} == {"mm", "mm^2", "mm^3", "n/a", "deg"}  # n/a: ratios
    assert {r["measure"] for r in long if r["units"] == "n/a"} == {
        "canal_ap_ratio",
        "canal_csa_ratio",
        "cord_ap_lr_ratio",
    }
    wide = _tsv(out / "group_morphometry_wide.tsv")
    assert len(wide) == 13
    sidecar = json.loads((out / "group_morphometry_wide.json").read_text())
    assert set(sidecar) == set(wide[0])
    assert sidecar["C3-C4_disc_height_mm"]["Units"] == "mm"
    assert sidecar["cervical_lordosis_deg"]["Units"] == "deg"
    assert sidecar["C5-C6_canal_ap_ratio"]["LongName"] == "C5-C6 canal ap compression ratio"
    lumbar = next(r for r in wide if r["image"] == "sub-01_ses-02_acq-sag_T2w")
    assert lumbar["lumbar_lordosis_deg"] != "n/a"
    thresholds = json.loads((out / "group_qc.json").read_text())["Thresholds"]
    assert thresholds["tukey_min_n"] == 10


def test_tukey_outlier_flagged(group):
    """Only the doubled disc height is an outlier; cut cord/canal volumes are not judged."""
    out, _ = group
    qc = {r["image"]: r for r in _tsv(out / "group_qc.tsv")}
    subject, level, measure = OUTLIER
    key = f"sub-{subject}_acq-sag_T2w"
    flagged = {k for k, r in qc.items() if r["flag_measure_outlier"] == "1"}
    assert flagged == {key}
    assert qc[key]["outlier_measures"].startswith(f"{level}_{measure}=")
    # Cohort-relative: its own column only; the image's status is that of its unflagged twins.
    twins = {r["qc_status"] for k, r in qc.items() if k.startswith("sub-1")}
    assert twins == {qc[key]["qc_status"]}
    assert "measure_outlier" not in qc[key]["flag_reasons"]
    sidecar = json.loads((out / "group_qc.json").read_text())
    assert "never changes qc_status" in sidecar["flag_measure_outlier"]["Description"]
    html = (out / "group.html").read_text()
    assert 'class="outlier"' in html and f"sub-{subject}.html#{key}" in html


def test_group_page_is_self_contained(group):
    page = group[1]
    assert "<svg" in page.read_text()
    assert_self_contained(page)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_group_page_loads_in_chromium(group):
    _, page = group
    load = load_page(CHROMIUM, page_url(page))
    assert load.title == "SpineSeg: group summary"
    assert load.errors == []
    assert len(load.images) == 13
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in load.images)
    assert all(u.startswith(("file:", "data:")) for u in load.requests)


def test_filters_and_missing_participants(group, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(group[0], out)
    run_group(out, participants=["sub-01", "99"], sessions=["02", "03"])
    qc = _tsv(out / "group_qc.tsv")
    assert [(r["image"], r["status"]) for r in qc] == [
        ("sub-01_ses-02_acq-sag_T2w", "ok"),
        ("sub-01_ses-03_acq-sag_T2w", "failed"),
        ("n/a", "missing"),
    ]
    assert qc[2]["participant_id"] == "sub-99"
    assert {r["image"] for r in _tsv(out / "group_morphometry_wide.tsv")} == {
        "sub-01_ses-02_acq-sag_T2w"
    }
    assert "sub-99" in (out / "group.html").read_text()


def test_broken_participant_files_do_not_stop_the_group(group, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(group[0], out)
    next(out.glob("sub-03/anat/*_qc.json")).write_text("{not json")
    next(out.glob("sub-04/anat/*_morphometry.tsv")).write_text("")
    (out / "logs/status/sub-05_acq-sag_T2w.json").write_text("[]")

    def no_images(*args, **kwargs):
        raise AssertionError("the group level must not read images")

    monkeypatch.setattr(nib, "load", no_images)
    run_group(out)
    qc = {r["participant_id"]: r for r in _tsv(out / "group_qc.tsv")}
    assert qc["sub-03"]["status"] == "ok" and qc["sub-03"]["flag_missing_cord"] == "n/a"
    assert qc["sub-05"]["status"] == "incomplete"  # QC files but no usable stamp
    wide = {r["participant_id"] for r in _tsv(out / "group_morphometry_wide.tsv")}
    assert "sub-04" not in wide and "sub-03" in wide


def test_empty_output_folder(tmp_path):
    page = run_group(tmp_path)
    assert _tsv(tmp_path / "group_qc.tsv") == []
    assert "No measurement found." in page.read_text()


def test_tables_are_ascii_and_whole_numbers_plain(group):
    """No en dash in the TSVs; a 1 mm voxel volume prints as '19954', not '19954.00'."""
    out, _ = group
    for tsv in out.rglob("*.tsv"):
        tsv.read_text().encode("ascii")  # raises on any non-ASCII character
    rows = _tsv(next(out.glob("sub-01/ses-01/anat/*_morphometry.tsv")))
    volumes = [r["volume_mm3"] for r in rows]
    assert all(v.isdigit() for v in volumes), volumes[:5]


def test_plot_tooltips_carry_units(group):
    _, page = group
    tips = re.findall(r"<circle [^>]*><title>([^<]*)</title>", page.read_text())
    ratios = [t for t in tips if re.search(r": [0-9.]+$", t)]  # ratios have no unit
    assert ratios and all(
        t.endswith((" mm", " mm^2", " mm^3", " deg")) for t in tips if t not in ratios
    )
    assert any("Lumbar lordosis (L1-S1): " in t and t.endswith(" deg") for t in tips)
