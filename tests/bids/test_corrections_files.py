"""Finding and matching correction files by BIDS entities, without any image work."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.corrections import checking, finding

SOURCES = ["sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"]


def touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def bids(tmp_path) -> Path:
    for rel in [*SOURCES, "sub-03/anat/sub-03_T2w.nii.gz"]:
        touch(tmp_path / "ds", rel)
    return tmp_path / "ds"


def test_both_naming_styles_match_by_entities(bids, tmp_path) -> None:
    labels = tmp_path / "labels"
    touch(labels, "sub-01/ses-01/anat/sub-01_acq-sag_ses-01_T2w_label-discs_dlabel.nii.gz")
    touch(labels, "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_seg-spine_desc-T2w_dseg.nii.gz")
    touch(labels, "sub-02/anat/sub-02_T1w_label-SC_seg.nii.gz")  # a cord mask: not ours
    touch(labels, "sub-03/anat/sub-03_T2w_label-disc_dlabel.nii.gz")  # exists, not selected
    found = finding.find_corrections(labels)
    assert [c.kind for c in found] == ["discs", "seg", "discs"]
    matched = finding.match(found, labels, bids, SOURCES)
    mine = matched.by_source["sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w"]
    assert set(mine) == {"discs", "seg"}
    assert matched.problems == []


def test_unmatched_and_doubled_corrections_are_one_line_each(bids, tmp_path) -> None:
    labels = tmp_path / "labels"
    touch(labels, "sub-02/anat/sub-02_T1w_label-disc_dlabel.nii.gz")
    touch(labels, "sub-02/anat/sub-02_T1w_labels-disc.nii.gz")
    touch(labels, "sub-09/anat/sub-09_T2w_label-discs_dlabel.nii.gz")
    matched = finding.match(finding.find_corrections(labels), labels, bids, SOURCES)
    assert matched.by_source == {}
    doubled, missing = sorted(matched.problems, key=lambda line: "sub-09" in line)
    assert len(matched.problems) == 2
    assert "2 disc points files for sub-02/anat/sub-02_T1w" in doubled
    assert "sub-09/anat/sub-09_T2w.nii[.gz], which is not in" in missing


def test_default_folder_and_refusals(bids, tmp_path) -> None:
    out = bids / "derivatives" / "spineseg"
    assert finding.resolve_dir(None, bids, out) is None
    (bids / "derivatives" / "labels").mkdir(parents=True)
    assert finding.resolve_dir(None, bids, out) == (bids / "derivatives" / "labels").resolve()
    assert finding.resolve_dir("none", bids, out) is None
    out.mkdir()
    with pytest.raises(ValueError, match="not corrections"):
        finding.resolve_dir(str(out), bids, out)


def test_disc_numbers_of_both_styles_give_the_same_discs(tmp_path) -> None:
    img = nib.Nifti1Image(np.zeros((5, 5, 30), np.int16), np.eye(4))
    sct, tss = np.zeros((5, 5, 30), np.uint8), np.zeros((5, 5, 30), np.uint8)
    sct[2, 2, 25], sct[2, 2, 10], sct[2, 2, 28] = 3, 8, 2  # C2-C3, C7-T1, C1-C2 (ignored)
    tss[2, 2, 25], tss[2, 2, 10] = 63, 71
    got = []
    for name, data in (("a", sct), ("b", tss)):
        path = tmp_path / f"sub-01_T2w_{name}_label-discs_dlabel.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        got.append(checking.disc_points(finding.Correction("discs", path, "x"), img))
    assert sorted(got[0]) == sorted(got[1]) == [63, 71]
    assert np.allclose(got[0][63], [2, 2, 25])
    loc = checking.points_localizer(got[0])
    data = np.asarray(loc.dataobj)
    assert {int(v) for v in np.unique(data)} == {0, 63, 71}
    assert (data == 63).sum() == (data == 71).sum() > 200  # a 4 mm ball: 257 voxels
