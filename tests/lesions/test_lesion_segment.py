"""`spineseg segment --lesion-model`: lesions of one file, beside its spine outputs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from lesion_helpers import build_lesion_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids"))

from bidsapp_testkit import FakeEngineFactory, make_weights, tiny_image

from bids_app.cli.main import main
from bids_app.lesions.measures import COLUMNS


def _segment(tmp_path: Path, model: Path | str, capsys) -> tuple[int, Path, Path, str]:
    scan = tmp_path / "in" / "my_scan.nii.gz"
    scan.parent.mkdir()
    nib.save(tiny_image(), scan)
    out = tmp_path / "seg"
    argv = ["segment", scan, out, "--weights", make_weights(tmp_path / "w"), "--device", "cpu"]
    rc = main(
        [str(a) for a in [*argv, "--lesion-model", model]], engine_factory=FakeEngineFactory()
    )
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, scan, out, captured.out + captured.err


def test_segment_writes_the_lesion_mask_and_tables_named_after_the_input(tmp_path, capsys):
    rc, scan, out, said = _segment(tmp_path, build_lesion_model(tmp_path / "models"), capsys)
    assert rc == 0
    mask = nib.load(out / "my_scan_label-lesion_mask.nii.gz")
    assert mask.shape == tiny_image().shape and np.allclose(mask.affine, tiny_image().affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    meta = json.loads((out / "my_scan_label-lesion_mask.json").read_text())
    spine = (out / "my_scan_seg-spine_dseg.nii.gz").resolve().as_uri()
    assert meta["Sources"] == [scan.resolve().as_uri(), spine]
    assert meta["Model"]["Name"] == "model_tiny_lesion"
    with open(out / "my_scan_seg-lesion_morphometry.tsv") as f:
        assert next(csv.reader(f, delimiter="\t")) == list(COLUMNS)
    assert (out / "my_scan_seg-lesionlevels_morphometry.tsv").is_file()
    assert "lesion(s)" in said and str(out / "my_scan_label-lesion_mask.nii.gz") in said
    # Issue 29: both lesion tables in the printed output list; no empty suffix list logged.
    assert str(out / "my_scan_seg-lesion_morphometry.tsv") in said
    assert str(out / "my_scan_seg-lesionlevels_morphometry.tsv") in said
    assert "on  images" not in said and "(1 fold(s)) on the input image" in said


def test_segment_refuses_a_bad_lesion_model_before_writing_anything(tmp_path, capsys):
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    rc, _, out, said = _segment(tmp_path, bad, capsys)
    assert rc == 78
    assert f"{bad}: no <Trainer>__<Plans>__<Config> folder" in said
    assert not list(out.glob("*.nii.gz"))
