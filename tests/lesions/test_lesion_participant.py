"""The lesion step inside a participant run (fake spine engine, tiny real lesion model)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import pytest
from lesion_helpers import build_lesion_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids"))

from bidsapp_testkit import FakeEngineFactory, fake_labels, make_bids, make_weights

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.bids.validation import find_validator, validate
from bids_app.cli.main import main
from bids_app.lesions.measures import COLUMNS, LOAD_COLUMNS
from bids_app.lesions.model import LesionModels
from bids_app.lesions.outputs import lesion_paths

T2W = "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz"
T1W = "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"


@pytest.fixture
def setup(tmp_path, capsys):
    dataset = make_bids(tmp_path / "ds", [T2W, T1W])
    weights = make_weights(tmp_path / "weights")
    out = tmp_path / "out"

    def run(model: Path, *extra: str) -> tuple[int, str]:
        argv = [dataset, out, "participant", "--skip-bids-validation", "--weights", weights]
        argv += ["--lesion-model", model, "--device", "cpu", *extra]
        rc = main([str(a) for a in argv], engine_factory=FakeEngineFactory())
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return rc, captured.err + captured.out

    return run, out, tmp_path


def test_lesion_outputs_beside_the_spine_outputs(setup):
    run, out, tmp = setup
    model = build_lesion_model(tmp / "models")
    rc, _ = run(model)
    assert rc == 0
    paths = lesion_paths(T2W, "T2w")
    for rel in paths.values():
        assert (out / rel).is_file(), rel
        assert (out / rel).with_name(Path(rel).name.split(".")[0] + ".json").is_file()
    assert not (out / lesion_paths(T1W, "T1w")["mask"]).exists()  # T2w only by default
    with open(out / paths["table"]) as f:
        assert next(csv.reader(f, delimiter="\t")) == list(COLUMNS)
    with open(out / paths["levels"]) as f:
        assert next(csv.reader(f, delimiter="\t")) == list(LOAD_COLUMNS)
    sidecar = json.loads((out / paths["table"].replace(".tsv", ".json")).read_text())
    assert sidecar["volume_mm3"]["Units"] == "mm^3" and all(
        sidecar[c]["Description"] for c in COLUMNS
    )
    mask_meta = json.loads((out / paths["mask"].replace(".nii.gz", ".json")).read_text())
    assert mask_meta["Sources"][0] == f"bids:raw:{T2W}"
    assert mask_meta["Model"]["Folds"] == ["fold_0"] and mask_meta["SpineSegVersion"]
    stamp = read_stamp(stamp_path(out, Path(T2W).name))
    assert set(paths.values()) <= set(stamp["outputs"])
    figure = "sub-01/figures/sub-01_ses-01_acq-sag_seg-lesion_desc-T2w_sagittal.png"
    assert figure in stamp["outputs"] and (out / figure).is_file()
    report = (out / "sub-01.html").read_text()
    assert "Lesions (" in report and paths["table"] in report and figure in report
    assert stamp["model"]["lesion"]["Name"] == model.name
    if find_validator() is not None:
        report = validate(out)
        assert report.ok, report.error_lines()
    # A rerun skips; another lesion model recomputes the T2w image only.
    rc, text = run(model)
    assert rc == 0 and "segmenting" not in text
    other = build_lesion_model(tmp / "models2", folds=(0, 1))
    rc, _ = run(other)
    stamp = read_stamp(stamp_path(out, Path(T2W).name))
    assert rc == 0 and stamp["model"]["lesion"]["Folds"] == ["fold_0", "fold_1"]


def test_a_mismatched_lesion_model_stops_the_run_with_78(setup):
    run, _, tmp = setup
    model = build_lesion_model(tmp / "models", outputs=3)
    rc, text = run(model)
    assert rc == 78
    line = next(ln for ln in text.splitlines() if "do not fit" in ln)
    assert "checkpoint_final.pth" in line


def test_a_spine_model_is_not_a_lesion_model_and_is_left_untouched(setup):
    from bids_app.nnunet.weights import DEMO_DIR, STEP1

    run, _, tmp = setup
    spine = tmp / "spine"
    shutil.copytree(DEMO_DIR / STEP1, spine)
    rc, text = run(spine)
    assert rc == 78 and "not a lesion model" in text
    assert not (spine / "manifest.json").exists()  # nothing recorded for a refused folder


def test_group_table_has_lesion_columns_and_flags(setup):
    run, out, tmp = setup
    model = build_lesion_model(tmp / "models")
    assert run(model)[0] == 0
    table = out / lesion_paths(T2W, "T2w")["table"]
    # Two lesions written by hand: one mostly outside the canal, one cut by the border.
    header = table.read_text().splitlines()[0].split("\t")
    values = [
        {"lesion_id": 1, "volume_mm3": 100, "levels": "C3,C4", "outside_cord_share": 0.9},
        {"lesion_id": 2, "volume_mm3": 50.5, "levels": "T2", "touches_fov_edge": 1},
    ]
    lines = ["\t".join(header)]
    lines += ["\t".join(str(v.get(c, 0)) for c in header) for v in values]
    table.write_text("\n".join(lines) + "\n")
    assert main([str(tmp / "ds"), str(out), "group"]) == 0
    with open(out / "group_qc.tsv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f, delimiter="\t")}
    t2, t1 = rows["sub-01_ses-01_acq-sag_T2w"], rows["sub-01_ses-01_T1w"]
    assert (t2["lesion_count"], t2["lesion_volume_mm3"]) == ("2", "150.50")
    assert (t2["lesion_level_highest"], t2["lesion_level_lowest"]) == ("C3", "T2")
    assert t2["flag_lesion_outside_cord"] == t2["flag_lesion_at_fov_edge"] == "1"
    assert (
        t2["qc_status"] in ("check", "fail")
        and "lesion(s) 1 mostly outside" in (t2["flag_reasons"])
    )
    assert t1["lesion_count"] == "n/a"
    page = (out / "group.html").read_text()
    assert "<th>Lesions</th>" in page and "2: 150 mm³, C3 to T2" in page
    sidecar = json.loads((out / "group_qc.json").read_text())
    assert sidecar["lesion_volume_mm3"]["Units"] == "mm^3"
    # The subject report says what group_qc.tsv says: the flags with their reasons, same status.
    report = (out / "sub-01.html").read_text()
    heading = f'<h2>sub-01_ses-01_acq-sag_T2w <span class="status status-{t2["qc_status"]}">'
    assert heading in report
    assert "lesion_outside_cord" in report and "lesion(s) 1 mostly outside" in report


def test_a_lesion_failure_keeps_the_spine_outputs_and_makes_the_image_partial(setup, monkeypatch):
    from bids_app.lesions.run import LesionRunner

    def broken(self, img, spine, run_on=None, kept=None):
        raise RuntimeError("no memory left for the lesion crop")

    monkeypatch.setattr(LesionRunner, "segment", broken)
    run, out, tmp = setup
    rc, _ = run(build_lesion_model(tmp / "models"))
    stamp = read_stamp(stamp_path(out, Path(T2W).name))
    assert rc == 3 and stamp["status"] == "partial"
    reason = stamp["reason"]
    assert reason.startswith("lesions: RuntimeError: no memory left for the lesion crop (see ")
    crash = out / reason.split("(see ")[1].rstrip(")")
    assert "Traceback" in crash.read_text()
    assert any(o.endswith("_seg-spine_desc-T2w_dseg.nii.gz") for o in stamp["outputs"])
    assert read_stamp(stamp_path(out, Path(T1W).name))["status"] == "ok"


def test_a_lesion_step_larger_than_the_memory_budget_is_refused_alone(setup, monkeypatch):
    from bids_app.lesions.run import LesionRunner

    monkeypatch.setattr(LesionRunner, "memory_bytes", lambda self, img: 2**50)
    run, out, tmp = setup
    rc, _ = run(build_lesion_model(tmp / "models"), "--mem-mb", "4000")
    stamp = read_stamp(stamp_path(out, Path(T2W).name))
    assert rc == 3 and stamp["status"] == "partial"
    assert stamp["reason"].startswith("lesions: need about 1048576.0 GiB on the 1 mm grid")
    assert "raise --mem-mb" in stamp["reason"]
    assert not (out / lesion_paths(T2W, "T2w")["mask"]).exists()
    assert any(o.endswith("_seg-spine_desc-T2w_dseg.nii.gz") for o in stamp["outputs"])


def test_the_lesion_memory_estimate_follows_the_1mm_grid(tmp_path):
    import nibabel as nib
    import numpy as np

    from bids_app.lesions.run import LesionRunner
    from bids_app.lesions.weights import resolve_lesion_model

    runner = LesionRunner(resolve_lesion_model(str(build_lesion_model(tmp_path))))

    def estimate(shape: tuple[int, int, int], zoom: float) -> int:
        affine = np.diag([zoom, zoom, zoom, 1.0])
        return runner.memory_bytes(nib.Nifti1Image(np.zeros(shape, np.uint8), affine))

    small = estimate((40, 40, 50), 1.0)
    # Twice the length in voxels, or the same voxels at 2 mm: twice the 1 mm grid along z.
    assert estimate((40, 40, 100), 1.0) == pytest.approx(2 * small, rel=0.02)
    assert estimate((20, 20, 25), 2.0) > 0.9 * small
    # At least the float32 input and one float32 output per head, per 1 mm voxel.
    assert small >= 40 * 40 * 50 * 4 * (1 + runner.heads)


def test_a_correction_does_not_rerun_the_lesion_network(setup, monkeypatch):
    """Issue 29: the lesion network's output is kept like the spine networks'; a corrected
    segmentation that leaves the canal as it was re-measures it, the network does not run."""
    run, out, tmp = setup
    model = build_lesion_model(tmp / "models")
    assert run(model)[0] == 0
    before = json.loads(
        (out / lesion_paths(T2W, "T2w")["mask"].replace(".nii.gz", ".json")).read_text()
    )

    def no_network(self, device):
        raise AssertionError("the lesion network ran again")

    monkeypatch.setattr(LesionModels, "on", no_network)
    raw = nib.load(tmp / "ds" / T2W)
    fixed = fake_labels(raw.shape)
    fixed[fixed == 64] = 65  # a level renamed by hand; cord and canal unchanged
    seg = (
        tmp
        / "ds"
        / "derivatives"
        / "labels"
        / T2W.replace("_T2w.nii.gz", "_seg-spine_desc-T2w_dseg.nii.gz")
    )
    seg.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(fixed, raw.affine), seg)
    seg.with_name(seg.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"GeneratedBy": [{"Name": "Manual"}]})
    )
    rc, text = run(model)
    assert rc == 0 and "lesion network output kept from the earlier run" in text
    stamp = read_stamp(stamp_path(out, Path(T2W).name))
    assert stamp["manual"] == "corrected segmentation"
    after = json.loads(
        (out / lesion_paths(T2W, "T2w")["mask"].replace(".nii.gz", ".json")).read_text()
    )
    assert after["Device"] == before["Device"]  # where the kept output was made
