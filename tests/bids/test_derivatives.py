"""Derivatives writer: names, LUTs, dataset_description, sidecars, validator on the tree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidsapp_testkit import FakeEngine, make_bids, tiny_image

from bids_app.bids import derivatives as d
from bids_app.bids.validation import find_validator, validate
from bids_app.engine.options import SegmentOptions
from bids_app.plumbing.labels import FINAL_LABELS, label_hex

MODEL = d.ModelInfo(
    "r20260730",
    ("Dataset101_TotalSpineSeg_step1", "Dataset102_TotalSpineSeg_step2"),
    {"Dataset101_TotalSpineSeg_step1_r20260730.zip": "ab" * 32},
)
SOURCE = "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz"


def test_entity_order_seg_before_res_label_after_res_desc_last():
    name = d.entity_name("sub-01_run-1", "dseg", desc="T2w", res="1mm", seg="spine")
    assert name == "sub-01_run-1_seg-spine_res-1mm_desc-T2w_dseg.nii.gz"
    name = d.entity_name("sub-01", "probseg", desc="T1w", label="cord", res="1mm")
    assert name == "sub-01_res-1mm_label-cord_desc-T1w_probseg.nii.gz"
    assert d.entity_name("scan", "dseg", seg="spine") == "scan_seg-spine_dseg.nii.gz"
    with pytest.raises(ValueError, match="run"):
        d.entity_name("sub-01", "dseg", run="1")


def test_output_paths_keep_source_entities_and_folder():
    paths = d.image_output_paths(SOURCE, "T2w", iso=True)
    folder = "sub-01/ses-01/anat/"
    stem = folder + "sub-01_ses-01_acq-sag_"
    assert paths[("final", False)] == stem + "seg-spine_desc-T2w_dseg.nii.gz"
    assert paths[("step1", False)] == stem + "seg-step1_desc-T2w_dseg.nii.gz"
    assert paths[("levels", False)] == stem + "seg-discmarkers_desc-T2w_dseg.nii.gz"
    assert paths[("cord_soft", False)] == stem + "label-cord_desc-T2w_probseg.nii.gz"
    assert paths[("canal_soft", False)] == stem + "label-canal_desc-T2w_probseg.nii.gz"
    assert paths[("final", True)] == stem + "seg-spine_res-1mm_desc-T2w_dseg.nii.gz"
    assert paths[("canal_soft", True)] == stem + "res-1mm_label-canal_desc-T2w_probseg.nii.gz"
    assert len(d.image_output_paths(SOURCE, "T2w", iso=False)) == 5
    assert d.bids_prefix("sub-02_T1w.nii", "T1w") == "sub-02"


def _read_tsv(data: bytes) -> list[dict]:
    return list(csv.DictReader(data.decode().splitlines(), delimiter="\t"))


def test_spine_lut_lists_every_final_label():
    rows = _read_tsv(d.spine_lut())
    assert [int(r["index"]) for r in rows] == [lab.index for lab in FINAL_LABELS]
    c2 = next(r for r in rows if r["index"] == "12")
    assert (c2["name"], c2["abbreviation"], c2["color"]) == ("vertebrae_C2", "C2", label_hex(12))
    assert len({r["name"] for r in rows}) == len(rows)


def test_step1_and_marker_luts():
    step1 = {int(r["index"]): r["name"] for r in _read_tsv(d.step1_lut())}
    assert step1[50] == "vertebrae_C2_to_sacrum" and step1[11] == "vertebrae_C1"
    assert 12 not in step1 and 63 in step1
    markers = {int(r["index"]): r["abbreviation"] for r in _read_tsv(d.discmarkers_lut())}
    assert sorted(markers) == list(range(1, 26))
    assert (markers[1], markers[2], markers[3], markers[8], markers[20], markers[25]) == (
        "C1",
        "C1-C2",
        "C2-C3",
        "C7-T1",
        "T12-L1",
        "L5-S",
    )


def test_dataset_description_links_raw_only_when_nested(tmp_path):
    raw = make_bids(tmp_path / "ds", [])
    desc = json.loads((raw / "dataset_description.json").read_text())
    desc["DatasetDOI"] = "doi:10.18112/openneuro.ds000001.v1.0.0"
    (raw / "dataset_description.json").write_text(json.dumps(desc))
    nested = d.dataset_description(raw / "derivatives" / "spineseg", raw, MODEL, env={})
    assert nested["DatasetType"] == "derivative"
    assert nested["DatasetLinks"] == {"raw": "../.."}
    assert nested["SourceDatasets"] == [
        {"DOI": "doi:10.18112/openneuro.ds000001.v1.0.0", "URL": "bids:raw:"}
    ]
    app, tss = nested["GeneratedBy"]
    assert app["Name"] == "spineseg" and app["Version"] == d.__version__
    assert tss["Version"] == "r20260730" and "ab" * 32 in tss["Description"]
    assert nested["License"] == "CC0"
    outside = d.dataset_description(tmp_path / "out", raw, MODEL, env={})
    assert "DatasetLinks" not in outside
    assert outside["SourceDatasets"] == [{"DOI": "doi:10.18112/openneuro.ds000001.v1.0.0"}]


def test_container_provenance_from_environment():
    assert d.container_info({}) is None
    assert d.container_info({"SPINESEG_CONTAINER_TAG": "org/spineseg:0.1.0"}) == {
        "Type": "docker",
        "Tag": "org/spineseg:0.1.0",
    }
    env = {"APPTAINER_CONTAINER": "/images/spineseg.sif", "SPINESEG_CONTAINER_TAG": "org/s:1"}
    assert d.container_info(env) == {
        "Type": "apptainer",
        "URI": "/images/spineseg.sif",
        "Tag": "org/s:1",
    }


def test_root_files_are_written_once_and_not_rewritten(tmp_path):
    raw = make_bids(tmp_path / "ds", [])
    out = tmp_path / "out"
    changed = d.write_dataset_files(out, raw, MODEL, env={})
    assert set(changed) == {
        "dataset_description.json",
        "README.md",
        ".bidsignore",
        "seg-spine_dseg.tsv",
        "seg-step1_dseg.tsv",
        "seg-discmarkers_dseg.tsv",
    }
    assert (out / ".bidsignore").read_text().splitlines() == [
        "*.html",
        "figures",
        "*_morphometry.tsv",
        "*_morphometry.json",
        "*_qc.json",
        "group_*",
        "ratings",
    ]
    mtime = (out / "dataset_description.json").stat().st_mtime_ns
    assert d.write_dataset_files(out, raw, MODEL, env={}) == []
    assert (out / "dataset_description.json").stat().st_mtime_ns == mtime
    assert d.write_dataset_files(out, raw, MODEL, app_version="9.9", env={}) == [
        "dataset_description.json",
        "README.md",
    ]


def _result(iso: bool = False, step1_only: bool = False):
    return FakeEngine().segment(
        tiny_image(), SegmentOptions(iso=iso, step1_only=step1_only), name="x"
    )


def test_image_outputs_and_sidecars(tmp_path):
    result = _result(iso=True)
    result.warnings.append("levels: C1 too small")
    loc = "sub-01/ses-01/anat/sub-01_ses-01_seg-spine_desc-T1w_dseg.nii.gz"
    written = d.write_image_outputs(tmp_path, SOURCE, "T2w", result, MODEL, localizer_output=loc)
    expected = d.image_output_paths(SOURCE, "T2w", iso=True)
    assert {p for p in written if p.endswith(".nii.gz")} == set(expected.values())
    assert len(written) == 20  # 10 images, each with its sidecar
    final = nib.load(tmp_path / expected[("final", False)])
    assert np.array_equal(final.get_fdata(), result.native["final"].get_fdata())
    assert np.allclose(final.affine, result.native["final"].affine)
    meta = json.loads(
        (tmp_path / expected[("final", False)].replace(".nii.gz", ".json")).read_text()
    )
    assert meta["Sources"] == [f"bids:raw:{SOURCE}", f"bids::{loc}"]
    assert meta["SpatialReference"] == f"bids:raw:{SOURCE}"
    assert meta["Manual"] is False and meta["TestTimeAugmentation"] is False
    assert meta["Model"]["Release"] == "r20260730"
    assert meta["Model"]["Steps"] == list(MODEL.steps)
    assert meta["Model"]["SHA256"] == MODEL.sha256
    assert meta["Device"] == "cpu" and meta["Landmarks"]["step2"] == ["C2-C3"]
    assert meta["Warnings"] == ["levels: C1 too small"]
    assert "Resolution" not in meta
    iso_meta = json.loads(
        (tmp_path / expected[("final", True)].replace(".nii.gz", ".json")).read_text()
    )
    assert "1 mm" in iso_meta["Resolution"]
    cord = json.loads(
        (tmp_path / expected[("cord_soft", False)].replace(".nii.gz", ".json")).read_text()
    )
    assert cord["Model"]["Steps"] == [MODEL.steps[0]]


def test_step1_only_result_writes_no_final_labels(tmp_path):
    written = d.write_image_outputs(tmp_path, SOURCE, "T2w", _result(step1_only=True), MODEL)
    assert not any("seg-spine" in p for p in written)
    assert any("seg-step1" in p for p in written)


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
@pytest.mark.parametrize("nested", [True, False])
def test_written_tree_passes_the_bids_validator(tmp_path, nested):
    images = ["sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz", "sub-02/anat/sub-02_T1w.nii"]
    raw = make_bids(tmp_path / "ds", images)
    out = raw / "derivatives" / "spineseg" if nested else tmp_path / "out"
    d.write_dataset_files(out, raw, MODEL, env={})
    for rel in images:
        suffix = Path(rel).name.split("_")[-1].split(".")[0]
        d.write_image_outputs(out, rel, suffix, _result(iso=True), MODEL)
    # Files the QC layer adds; .bidsignore must cover them.
    (out / "sub-01.html").write_text("<html></html>")
    (out / "sub-01" / "figures").mkdir()
    (
        out / "sub-01" / "figures" / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_sagittal.png"
    ).write_bytes(b"x")
    anat = out / "sub-01" / "ses-01" / "anat"
    (anat / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_morphometry.tsv").write_text("a\tb\n1\t2\n")
    (anat / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_morphometry.json").write_text("{}")
    (anat / "sub-01_ses-01_acq-sag_seg-spine_desc-T2w_qc.json").write_text("{}")
    (out / "group_morphometry.tsv").write_text("a\n1\n")
    (out / "logs" / "status").mkdir(parents=True)
    (out / "logs" / "status" / "sub-02_T1w.json").write_text("{}")
    report = validate(out)
    assert report.errors == [], report.error_lines()
    assert report.returncode == 0


@pytest.mark.parametrize(
    "relpath",
    ["sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz", "sub-01/mrs/sub-01_acq-sag_T2w.nii.gz"],
)
def test_qc_files_sit_beside_the_image_outputs_whatever_the_folder(relpath):
    qc = d.qc_output_paths(relpath, "T2w")
    final = d.image_output_paths(relpath, "T2w", iso=False)[("final", False)]
    folder = final.rsplit("/", 1)[0]
    for kind in ("qc", "morphometry", "morphometry_json"):
        assert qc[kind].rsplit("/", 1)[0] == folder
        assert "_seg-spine_desc-T2w_" in qc[kind]
    assert qc["sagittal"].startswith("sub-01/figures/")
