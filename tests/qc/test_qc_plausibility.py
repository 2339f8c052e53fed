"""Plausibility flags: each made to fire on a phantom whose labels were broken on purpose."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import bids_source, spine_s, stamp_for

from bids_app.bids.stamps import write_stamp
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L
from bids_app.qc import measures, run_group, write_image_qc, write_subject_report
from bids_app.qc.flags import Thresholds, image_flags, level_range, qc_status
from bids_app.qc.geometry import LabelGeometry
from bids_app.qc.plausibility import level_labels
from bids_app.qc.records import read_tsv

TH = Thresholds()
PLAUSIBILITY = {
    "label_fragments",
    "levels_out_of_order",
    "level_used_twice",
    "disc_misplaced",
    "vertebra_count",
    "transitional_vertebra",
    "implausible_size",
    "noncontiguous_levels",
}


def _flags(data: np.ndarray, affine: np.ndarray) -> dict[str, str]:
    geom = LabelGeometry.from_image(nib.Nifti1Image(data.astype(np.uint8), affine))
    rows = measures.measure(geom)
    return {f["id"]: f["reason"] for f in image_flags(geom, (1, 1, 1), ["C2-C3"], TH, rows=rows)}


@pytest.fixture(scope="module")
def spine(whole) -> tuple[np.ndarray, np.ndarray]:
    return np.asanyarray(whole.labels.dataobj).copy(), whole.labels.affine


def _world_shift(data: np.ndarray, affine: np.ndarray, label: int, mm: np.ndarray) -> np.ndarray:
    """`data` with one label moved by a world offset (voxels it leaves become background)."""
    out = np.where(data == label, 0, data)
    ijk = np.argwhere(data == label)
    step = np.rint(np.linalg.solve(affine[:3, :3], mm)).astype(int)
    out[tuple((ijk + step).T)] = label
    return out


def test_clean_whole_spine_is_plausible_and_ok(spine):
    flags = _flags(*spine)
    assert flags == {}
    assert qc_status("ok", list(flags)) == "ok"


def test_levels_out_of_order(spine):
    """C5 above C4: the two vertebra names swapped."""
    data, affine = spine
    swapped = data.copy()
    swapped[data == 14], swapped[data == 15] = 15, 14
    flags = _flags(swapped, affine)
    assert "C5 above C4" in flags["levels_out_of_order"]
    assert qc_status("ok", list(flags)) == "check"


def test_level_used_twice(spine):
    data, affine = spine
    twice = np.where(data == 13, 16, data)  # C3 labelled C6
    flags = _flags(twice, affine)
    assert flags["level_used_twice"].startswith("C6 found at two places")


def test_disc_in_the_abdomen(spine):
    data, affine = spine
    moved = _world_shift(data, affine, 94, np.array([0.0, 35.0, 0.0]))  # L3-L4, 35 mm anterior
    flags = _flags(moved, affine)
    assert "L3-L4 not between L3 and L4" in flags["disc_misplaced"]
    assert "levels_out_of_order" not in flags


def test_thoracic_count(spine):
    """A missing thoracic vertebra (merged into its neighbour's name) leaves 11 of 12."""
    data, affine = spine
    merged = np.where(data == 26, 0, data)
    flags = _flags(merged, affine)
    assert flags["vertebra_count"] == "11 thoracic vertebrae where 12 are expected"
    assert "T6" in flags["noncontiguous_levels"]


@pytest.mark.parametrize("n_lumbar", [4, 6])
def test_transitional_vertebra_flagged_never_renamed(n_lumbar):
    ph = render_phantom(3, Acquisition(fov="whole", lr_extent=40.0), n_lumbar=n_lumbar)
    data = np.asanyarray(ph.labels.dataobj)
    flags = _flags(data, ph.labels.affine)
    assert set(flags) & PLAUSIBILITY == {"transitional_vertebra"}
    assert flags["transitional_vertebra"].startswith(f"{n_lumbar} lumbar vertebrae")
    present = set(np.unique(data).tolist())
    assert (46 in present) == (n_lumbar == 6) and (45 in present) == (n_lumbar != 4)


def test_partial_count_outside_the_region_is_not_judged(cervical, lumbar):
    """A field of view that cuts a region does not count it."""
    for ph in (cervical, lumbar):
        flags = _flags(np.asanyarray(ph.labels.dataobj), ph.labels.affine)
        assert not set(flags) & PLAUSIBILITY, flags


def test_collapsed_vertebra_jumps_against_its_neighbours(spine, whole):
    """T8 crushed: the lower 60 % of its height (in the spine frame) erased."""
    data, affine = spine
    seg = whole.anatomy.segment(28)
    ijk = np.argwhere(data == 28)
    s = spine_s(whole.anatomy, ijk @ affine[:3, :3].T + affine[:3, 3])
    ijk = ijk[s > seg.s_top + 0.4 * seg.height]
    broken = data.copy()
    broken[tuple(ijk.T)] = 0
    flags = _flags(broken, affine)
    assert "T8 volume" in flags["implausible_size"]
    assert "T8 body height" in flags["implausible_size"]


def test_sacrum_speck_does_not_stretch_the_range(cervical):
    """3 voxels labelled sacrum inside the neck: no 'C1 to S', no invented missing levels."""
    data = np.asanyarray(cervical.labels.dataobj).copy()
    affine = cervical.labels.affine
    c = np.rint(np.argwhere(data == 13).mean(0)).astype(int)
    c[1] += 40 if affine[1, 1] > 0 else -40  # in front of C3, away from any label
    data[c[0], c[1], c[2] : c[2] + 3] = L.SACRUM
    flags = _flags(data, affine)
    assert "noncontiguous_levels" not in flags
    assert flags["label_fragments"].startswith("labels below 50 mm3 ignored")
    assert "S (3 mm3 in 1 part(s))" in flags["label_fragments"]
    geom = LabelGeometry.from_image(nib.Nifti1Image(data, affine))
    assert level_range(level_labels(geom, TH)).startswith("C1 to ")
    assert not level_range(level_labels(geom, TH)).endswith(" S")


@pytest.mark.parametrize(
    ("run", "flags", "expected"),
    [
        ("ok", [], "ok"),
        ("ok", ["thick_slices"], "ok"),
        ("ok", ["split_components"], "check"),
        ("partial", [], "check"),
        ("ok", ["no_segmentation"], "fail"),
        ("failed", [], "fail"),
    ],
)
def test_qc_status_follows_flags(run, flags, expected):
    assert qc_status(run, flags) == expected


def test_wrong_labels_never_show_ok(tmp_path, cervical):
    """The reported case: a finished run with levels out of order is 'check' in both reports."""
    data = np.asanyarray(cervical.labels.dataobj).copy()
    data[data == 14], data[data == 15] = 15, 14
    stem, source = "sub-09_acq-sag", "sub-09/anat/sub-09_acq-sag_T2w.nii.gz"
    summary = write_image_qc(
        cervical.image,
        nib.Nifti1Image(data, cervical.labels.affine),
        None,
        output_dir=tmp_path,
        source=bids_source(stem),
        suffix="T2w",
        landmarks=["C2-C3"],
    )
    write_stamp(
        tmp_path / "logs/status" / f"{stem}_T2w.json",
        stamp_for("09", None, source, "ok", summary["outputs"]),
    )
    html = write_subject_report(tmp_path, "09").read_text()
    assert 'class="status status-check">check<' in html
    assert "status status-ok" not in html
    run_group(tmp_path)
    row = read_tsv(tmp_path / "group_qc.tsv")[0]
    assert (row["qc_status"], row["status"], row["flag_levels_out_of_order"]) == ("check", "ok", 1)
