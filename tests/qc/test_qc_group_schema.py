"""Issue 29: one level range everywhere, fixed group table columns, TSV cells that cannot
shift a column, and a QC status that does not depend on the cohort."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import add_image, stamp_for

from bids_app.bids.stamps import write_stamp
from bids_app.plumbing import labels as L
from bids_app.qc import run_group
from bids_app.qc.group import LONG_COLUMNS, wide_columns
from bids_app.qc.ratings import SCHEMA
from bids_app.qc.records import read_tsv


def _rows(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def _header(path) -> list[str]:
    return _rows(path)[0]


@pytest.fixture(scope="module")
def speck(cervical, tmp_path_factory):
    """A cervical image whose labels hold 3 voxels of sacrum in front of C3 (a fragment)."""
    data = np.asanyarray(cervical.labels.dataobj).copy()
    affine = cervical.labels.affine
    c = np.rint(np.argwhere(data == 13).mean(0)).astype(int)
    c[1] += 40 if affine[1, 1] > 0 else -40  # in front of C3, away from any label
    data[c[0], c[1], c[2] : c[2] + 3] = L.SACRUM
    labels = nib.Nifti1Image(data, affine)
    base = tmp_path_factory.mktemp("speck")
    out, bids = base / "out", base / "bids"
    key = add_image(out, bids, replace(cervical, labels=labels), "05", None)
    run_group(out)
    return out, key


def test_a_fragment_is_absent_from_every_table_plot_and_report(speck):
    out, key = speck
    qc = json.loads(next(out.glob("sub-05/anat/*_qc.json")).read_text())
    assert L.SACRUM in qc["labels_ignored"] and L.SACRUM not in qc["labels_present"]
    assert not qc["levels"].endswith(" S")
    assert "S (3 mm3" in next(f["reason"] for f in qc["flags"] if f["id"] == "label_fragments")
    morph = read_tsv(next(out.glob("sub-05/anat/*_morphometry.tsv")))
    assert "S" not in {r["abbreviation"] for r in morph}
    _, group_qc = _rows(out / "group_qc.tsv")
    (row,) = group_qc
    assert row["levels_present"] == qc["levels"]
    assert row["bottom_level"] == qc["levels"].split(" to ")[-1] != "S"
    _, wide = _rows(out / "group_morphometry_wide.tsv")
    assert wide[0]["S_volume_mm3"] == "n/a"
    _, long = _rows(out / "group_morphometry_long.tsv")
    assert "S" not in {r["abbreviation"] for r in long}
    page = (out / "group.html").read_text()
    assert f"{key} S:" not in page  # no point of the fragment in any plot
    assert f"{key} C3:" in page


def test_group_tables_have_the_same_columns_whatever_the_cohort(derivatives, tmp_path):
    """A cervical-only and a lumbar-only group write the same headers (angles no image has,
    levels no image holds, lesion columns without a lesion run), as documented."""
    headers = []
    for session in ("01", "02"):
        out = tmp_path / session
        shutil.copytree(derivatives.out, out)
        run_group(out, participants=["01"], sessions=[session])
        headers.append(
            [
                _header(out / name)
                for name in (
                    "group_qc.tsv",
                    "group_morphometry_wide.tsv",
                    "group_morphometry_long.tsv",
                )
            ]
        )
        wide_header = _header(out / "group_morphometry_wide.tsv")
        assert wide_header == wide_columns()
        assert {"cervical_lordosis_deg", "thoracic_kyphosis_deg", "lumbar_lordosis_deg"} <= set(
            wide_header
        )
        assert {"L6_body_height_mm", "T12-L1_disc_height_mm", "SC_volume_mm3"} <= set(wide_header)
        assert "C1_disc_height_mm" not in wide_header  # a measure only where it applies
        assert _header(out / "group_morphometry_long.tsv") == list(LONG_COLUMNS)
        sidecars = {
            name: json.loads((out / f"{name}.json").read_text())
            for name in ("group_qc", "group_morphometry_wide")
        }
        for name, sidecar in sidecars.items():
            assert set(_header(out / f"{name}.tsv")) <= set(sidecar), name
    assert headers[0] == headers[1]


def test_tabs_and_line_breaks_in_cells_never_shift_a_column(derivatives, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    key = derivatives.keys["cervical"]
    (out / "ratings").mkdir()
    (out / "ratings" / "sub-01_ratings.json").write_text(
        json.dumps(
            {
                "schema": SCHEMA,
                "subject": "01",
                "date": "2026-12-01T10:00:00.000Z",
                "ratings": [
                    {"image": key, "rating": "bad", "comment": 'C5\tlooks "odd"\nsee\r\nslice 12'}
                ],
            }
        )
    )
    failed = "sub-01/ses-03/anat/sub-01_ses-03_acq-sag_T2w.nii.gz"
    write_stamp(
        out / "logs/status/sub-01_ses-03_acq-sag_T2w.json",
        stamp_for("01", "03", failed, "failed", [], reason="line one\nline\ttwo"),
    )
    run_group(out)
    for name in ("group_qc.tsv", "group_worklist.tsv"):
        path = out / name
        lines = path.read_text().splitlines()
        width = len(lines[0].split("\t"))
        assert all(len(line.split("\t")) == width for line in lines), name
    header, rows = _rows(out / "group_qc.tsv")
    by_image = {r["image"]: r for r in rows}
    assert by_image[key]["qc_comment"] == 'C5 looks "odd" see slice 12'
    assert by_image["sub-01_ses-03_acq-sag_T2w"]["reason"] == "line one line two"
    assert all(None not in r and len(r) == len(header) for r in rows)
