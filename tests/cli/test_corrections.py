"""Manual corrections through the participant level, with the fake engine.

What a user checks: a corrected segmentation is written as it is without any network call,
marked manual, and recomputed only when it changes; disc points guide a new labeling; a bad
correction is one line and changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidsapp_testkit import FakeEngineFactory, fake_labels, tree_digest

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.bids.validation import find_validator, validate
from bids_app.cli.main import main

T2 = "sub-01_ses-01_acq-sag_T2w.nii.gz"
ANAT = Path("sub-01/ses-01/anat")
SEG = ANAT / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_dseg.nii.gz"
DISC_POINTS = ANAT / "sub-01_ses-01_acq-sag_T2w_label-discs_dlabel.nii.gz"
MANUAL = {"GeneratedBy": [{"Name": "Manual", "Author": "A. Rater", "Date": "2026-12-10"}]}


@pytest.fixture
def run(dataset, weights, tmp_path, capsys):
    out = tmp_path / "out"

    def _run(*extra):
        factory = FakeEngineFactory()
        argv = [dataset, out, "participant", "--skip-bids-validation", "--weights", weights]
        rc = main([str(a) for a in [*argv, *extra]], engine_factory=factory)
        _, stderr = capsys.readouterr()
        assert "Traceback" not in stderr
        return rc, stderr, factory

    _run.out = out
    return _run


def labels_dir(dataset: Path) -> Path:
    return dataset / "derivatives" / "labels"


def put(dataset: Path, rel: Path, data: np.ndarray, affine=None, sidecar=None) -> Path:
    """A correction file beside the raw data (the default corrections folder)."""
    raw = nib.load(dataset / ANAT / T2)
    path = labels_dir(dataset) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, raw.affine if affine is None else affine), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def corrected(dataset: Path) -> np.ndarray:
    """The fake engine's labels with C3-C4 renamed C4-C5: a level fixed by hand."""
    labels = fake_labels(nib.load(dataset / ANAT / T2).shape)
    labels[labels == 64] = 65
    return labels


def test_corrected_segmentation_is_taken_as_it_is_without_network(run, dataset) -> None:
    assert run()[0] == 0
    fixed = corrected(dataset)
    put(dataset, SEG, fixed, sidecar=MANUAL)
    rc, _, factory = run()
    assert rc == 0
    assert factory.calls == []  # no network for the corrected image, the others skipped
    assert np.array_equal(np.asarray(nib.load(run.out / SEG).dataobj), fixed)
    side = json.loads((run.out / SEG).with_name(SEG.name.replace(".nii.gz", ".json")).read_text())
    assert side["Manual"] is True
    assert f"bids:raw:derivatives/labels/{SEG.as_posix()}" in side["Sources"]
    assert side["GeneratedBy"][0]["Name"] == "Manual"
    stamp = read_stamp(stamp_path(run.out, T2))
    assert stamp["manual"] == "corrected segmentation"
    assert stamp["corrections"][0]["kind"] == "seg"
    assert stamp["options"]["corrections"]
    # A rerun recomputes nothing; a changed correction recomputes exactly that image.
    assert run()[2].calls == [] and read_stamp(stamp_path(run.out, T2)) == stamp
    fixed[fixed == 65] = 66
    put(dataset, SEG, fixed, sidecar=MANUAL)
    assert run()[0] == 0
    assert read_stamp(stamp_path(run.out, T2))["finished"] >= stamp["finished"]
    assert 66 in np.asarray(nib.load(run.out / SEG).dataobj)
    if find_validator() is not None:
        assert validate(run.out).errors == []


def test_disc_points_guide_a_new_labeling(run, dataset) -> None:
    assert run()[0] == 0
    shape = nib.load(dataset / ANAT / T2).shape
    points = np.zeros(shape, np.uint8)
    points[2, 2, 8], points[2, 2, 3] = 3, 5  # C2-C3 above C4-C5, SCT numbers
    put(dataset, DISC_POINTS, points)
    rc, _, factory = run()
    assert rc == 0
    # The fake engine keeps no network outputs, so the networks run, with the points.
    assert factory.calls == [(T2, True)]
    stamp = read_stamp(stamp_path(run.out, T2))
    assert stamp["manual"] == "disc points"
    side = json.loads((run.out / SEG).with_name(SEG.name.replace(".nii.gz", ".json")).read_text())
    assert side["Manual"] is False and side["GeneratedBy"][0]["Name"] == "Manual"


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("grid", "on another grid than its image (8x10x11 voxels"),
        ("orientation", "another orientation than its image (LAS, the image is RAS)"),
        ("labels", "unknown label value(s) 7"),
        ("order", "disc points out of order (C4-C5 is not below C2-C3)"),
        ("not manual", "does not mark it as manual"),
    ],
)
def test_a_bad_correction_is_one_line_and_changes_nothing(run, dataset, problem, expected):
    assert run()[0] == 0
    before = tree_digest(run.out / "sub-01")
    stamp = read_stamp(stamp_path(run.out, T2))
    shape = nib.load(dataset / ANAT / T2).shape
    fixed = corrected(dataset)
    if problem == "grid":
        put(dataset, SEG, fixed[..., :-1], sidecar=MANUAL)
    elif problem == "orientation":
        affine = nib.load(dataset / ANAT / T2).affine @ np.diag([-1, 1, 1, 1])
        put(dataset, SEG, fixed, affine=affine, sidecar=MANUAL)
    elif problem == "labels":
        fixed[0, 0, 0] = 7
        put(dataset, SEG, fixed, sidecar=MANUAL)
    elif problem == "order":
        points = np.zeros(shape, np.uint8)
        points[2, 2, 3], points[2, 2, 8] = 3, 5  # C2-C3 below C4-C5
        put(dataset, DISC_POINTS, points)
    else:
        put(dataset, SEG, fixed, sidecar={"Manual": False})
    rc, stderr, factory = run()
    assert rc == 1
    lines = [ln for ln in stderr.splitlines() if expected in ln]
    assert len(lines) >= 1 and "labels/sub-01/ses-01/anat/" in lines[0]
    assert factory.calls == []
    assert tree_digest(run.out / "sub-01") == before
    assert read_stamp(stamp_path(run.out, T2)) == stamp


def test_a_correction_for_a_missing_image_is_one_line(run, dataset) -> None:
    fixed = corrected(dataset)
    path = put(dataset, SEG, fixed, sidecar=MANUAL)
    orphan = labels_dir(dataset) / "sub-09/anat/sub-09_seg-spine_desc-T2w_dseg.nii.gz"
    orphan.parent.mkdir(parents=True)
    path.rename(orphan)
    rc, stderr, _ = run()
    assert rc == 0
    assert "sub-09/anat/sub-09_T2w.nii[.gz], which is not in" in stderr


def test_none_turns_the_default_folder_off_and_the_output_is_refused(run, dataset) -> None:
    put(dataset, SEG, corrected(dataset), sidecar=MANUAL)
    rc, _, factory = run("--corrections", "none")
    assert rc == 0 and (T2, False) in factory.calls
    rc, stderr, _ = run("--corrections", str(run.out))
    assert rc == 64 and "SpineSeg's results are not corrections" in stderr


@pytest.mark.with_qc
def test_the_loop_ratings_worklist_correction_reports(run, dataset, capsys) -> None:
    """Rate, list, correct, rerun: the measurements follow the correction, reports mark it."""
    assert run()[0] == 0
    out = run.out
    (out / "ratings").mkdir()
    (out / "ratings" / "sub-01_ratings.json").write_text(
        json.dumps(
            {
                "schema": "spineseg-ratings/1",
                "subject": "01",
                "date": "2026-12-10T10:00:00Z",
                "ratings": [
                    {"image": "sub-01_ses-01_acq-sag_T2w", "rating": "bad", "comment": "C4?"}
                ],
            }
        )
    )
    assert main([str(dataset), str(out), "group"]) == 0
    rows = (out / "group_worklist.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:6] == ["image", "status", "qc_status", "flags", "rating", "comment"]
    assert len(rows) == 2 and rows[1].startswith("sub-01_ses-01_acq-sag_T2w\tok\t")
    assert "\tbad\tC4?\t" in rows[1]
    capsys.readouterr()
    assert main(["review", str(out), "--bids-dir", str(dataset), "--print"]) == 0
    printed = capsys.readouterr().out
    assert f"fsleyes {dataset / ANAT / T2} {out / SEG} --overlayType label" in printed
    assert f"itksnap -g {dataset / ANAT / T2} -s {out / SEG}" in printed

    automatic = json.loads(
        (out / ANAT / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_qc.json").read_text()
    )
    fixed = corrected(dataset)
    put(dataset, SEG, fixed, sidecar=MANUAL)
    assert run()[0] == 0
    morph = (out / ANAT / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_morphometry.tsv").read_text()
    header, *body = [ln.split("\t") for ln in morph.splitlines()]
    by_label = {int(r[header.index("index")]): r for r in body}
    assert 64 not in by_label
    # The fake labels' levels are a few voxels, under the 50 mm3 of a fragment: they count
    # nowhere (issue 29), and qc.json lists the corrected disc among the ignored labels.
    qc = json.loads((out / ANAT / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_qc.json").read_text())
    assert 65 in qc["labels_ignored"] and 64 not in qc["labels_ignored"] + qc["labels_present"]
    assert (fixed == 65).sum() > 0
    stamp = read_stamp(stamp_path(out, T2))
    assert stamp["automatic_flags"] == automatic["flags"]
    assert "status-manual" in (out / "sub-01.html").read_text()
    assert main([str(dataset), str(out), "group"]) == 0
    qc_rows = (out / "group_qc.tsv").read_text().splitlines()
    header = qc_rows[0].split("\t")
    row = next(
        r.split("\t") for r in qc_rows if r.startswith("sub-01\tses-01\tsub-01_ses-01_acq-sag_T2w")
    )
    assert row[header.index("correction")] == "corrected segmentation"
    if find_validator() is not None:
        assert validate(out).errors == []


def test_a_refused_correction_shows_in_the_group_tables_and_work_list(run, dataset) -> None:
    """Issue 29: the image keeps its outputs and stamp, but group_qc.tsv says the correction
    was refused (and why), its QC status asks for a check, and the work list holds it; a
    good correction later clears the note."""
    assert run()[0] == 0
    shape = nib.load(dataset / ANAT / T2).shape
    points = np.zeros(shape, np.uint8)
    points[2, 2, 3], points[2, 2, 8] = 3, 5  # C2-C3 below C4-C5: refused
    put(dataset, DISC_POINTS, points)
    assert run()[0] == 1
    assert main([str(dataset), str(run.out), "group"]) == 0
    row = _qc_row(run.out, "sub-01_ses-01_acq-sag_T2w")
    assert "disc points out of order" in row["correction_refused"]
    assert "label-discs_dlabel.nii.gz" in row["correction_refused"]
    assert row["status"] == "ok" and row["qc_status"] == "check"
    work = (run.out / "group_worklist.tsv").read_text().splitlines()
    assert len(work) == 2 and work[1].startswith("sub-01_ses-01_acq-sag_T2w\tok\tcheck\t")
    points[2, 2, 3], points[2, 2, 8] = 5, 3  # now in order: accepted, the note goes
    put(dataset, DISC_POINTS, points)
    assert run()[0] == 0
    assert main([str(dataset), str(run.out), "group"]) == 0
    assert _qc_row(run.out, "sub-01_ses-01_acq-sag_T2w")["correction_refused"] == "n/a"


def _qc_row(out: Path, image: str) -> dict[str, str]:
    header, *rows = [ln.split("\t") for ln in (out / "group_qc.tsv").read_text().splitlines()]
    return next(dict(zip(header, r, strict=True)) for r in rows if r[2] == image)
