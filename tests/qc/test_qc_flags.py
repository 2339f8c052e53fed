"""QC flags on a clean phantom and on the failures each flag is meant to catch."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_app.plumbing import labels as L
from bids_app.qc.flags import (
    Thresholds,
    geometry_flags,
    group_outliers,
    image_flags,
    missing_levels,
)
from bids_app.qc.geometry import LabelGeometry

TH = Thresholds()


def _flags(data: np.ndarray, affine: np.ndarray, landmarks=("C2-C3",)) -> dict[str, str]:
    geom = LabelGeometry.from_image(nib.Nifti1Image(data, affine))
    return {f["id"]: f["reason"] for f in image_flags(geom, (1, 1, 1), list(landmarks), TH)}


@pytest.fixture(scope="module")
def labels(cervical) -> tuple[np.ndarray, np.ndarray]:
    return np.asanyarray(cervical.labels.dataobj).copy(), cervical.labels.affine


def test_clean_phantom_raises_nothing(labels):
    assert _flags(*labels) == {}


def test_missing_cord_and_canal(labels):
    data, affine = labels
    no_cord = np.where(data == L.CORD, L.CANAL, data).astype(np.uint8)
    flags = _flags(no_cord, affine)
    assert set(flags) == {"missing_cord"}
    no_canal = np.where(np.isin(data, (L.CORD, L.CANAL)), 0, data).astype(np.uint8)
    assert set(_flags(no_canal, affine)) == {"missing_cord", "missing_canal"}


def test_gap_in_levels(labels):
    data, affine = labels
    gap = np.where(data == 14, 0, data).astype(np.uint8)  # C4 lost
    flags = _flags(gap, affine)
    assert set(flags) == {"noncontiguous_levels", "vertebra_count"}
    assert flags["vertebra_count"] == "6 cervical vertebrae where 7 are expected"
    assert "C4" in flags["noncontiguous_levels"] and "C1" in flags["noncontiguous_levels"]


def test_level_used_twice(labels):
    """The TotalSpineSeg #67 failure: one level name on two vertebrae, the next one missing."""
    data, affine = labels
    twice = np.where(data == 13, 16, data).astype(np.uint8)  # C3 labelled C6
    flags = _flags(twice, affine)
    assert "C6 (2 parts)" in flags["split_components"]
    assert "C3" in flags["noncontiguous_levels"]


def test_small_fragment_is_not_a_split(labels):
    """The phantom's detached spinous tips (< 10 % of their vertebra) stay unflagged."""
    data, affine = labels
    geom = LabelGeometry.from_image(nib.Nifti1Image(data, affine))
    assert any(len(s) > 1 for s in geom.component_sizes.values())
    assert "split_components" not in _flags(data, affine)


def test_cord_outside_canal(labels):
    data, affine = labels
    moved = np.where(data == L.CORD, L.CANAL, data).astype(np.uint8)
    ijk = np.argwhere(data == L.CORD)
    ijk[:, 1] -= 14  # RAS grid: 14 mm posterior, out of the canal
    moved[tuple(ijk.T)] = L.CORD
    flags = _flags(moved, affine)
    assert "cord_outside_canal" in flags
    assert "%" in flags["cord_outside_canal"]


def test_no_landmark_and_no_segmentation(labels):
    data, affine = labels
    assert set(_flags(data, affine, landmarks=())) == {"no_landmark"}
    assumed = _flags(data, affine, landmarks=["assumed top disc C2-C3"])
    assert set(assumed) == {"no_landmark"} and "--assume-top-disc" in assumed["no_landmark"]
    flags = image_flags(None, (1, 1, 1), ["C2-C3"], TH, missing_reason="step 2 failed")
    assert flags == [{"id": "no_segmentation", "reason": "step 2 failed"}]
    empty = np.zeros((8, 8, 8), np.uint8)
    assert set(_flags(empty, np.eye(4))) == {"no_segmentation"}


@pytest.mark.parametrize(
    ("zooms", "thick"),
    [((1, 1, 1), False), ((0.7, 0.7, 4.0), True), ((3.0, 0.8, 0.8), True), ((1, 1, 1.9), False)],
)
def test_thick_slices(zooms, thick):
    assert bool(geometry_flags(zooms, TH)) == thick


@pytest.mark.parametrize(
    ("present", "gaps"),
    [
        ([43, 94, 44, 95, 45, 100, 50], []),  # 5 lumbar vertebrae
        ([43, 94, 44, 100, 50], []),  # 4 lumbar vertebrae: L4 sits on the sacrum
        ([44, 95, 45, 96, 46, 100, 50], []),  # 6 lumbar vertebrae
        ([43, 45, 100], [94, 44, 95]),
        ([11, 12, 64], [63, 13]),
    ],
)
def test_level_sequence_variants(present, gaps):
    assert missing_levels(present) == gaps


def test_fragments_at_the_image_border_are_not_gaps():
    """A spinous process of a vertebra whose body is above the image is no skipped level."""
    assert missing_levels([28, 30, 81, 31]) == [79, 29, 80]  # T8 ... T10
    assert missing_levels([28, 30, 81, 31], cut=[28]) == []
    assert missing_levels([28, 30, 81, 31], cut=[30]) == [79, 29, 80]  # not at an end


def test_group_outliers_need_ten_images():
    th = Thresholds()
    table = {f"img{i}": {"C3_body_height_mm": 14.0 + 0.1 * i} for i in range(9)}
    table["img9"] = {"C3_body_height_mm": 30.0}
    out = group_outliers(table, th)
    assert list(out) == ["img9"] and out["img9"][0][0] == "C3_body_height_mm"
    del table["img0"]
    assert group_outliers(table, th) == {}
