"""Issue 29: disc points in the body-centre convention (SCT's labels.nii.gz: values 3 and 5
at the centres of the C3 and C5 bodies) are refused in one line, not taken as discs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.corrections.checking import CorrectionError, check
from bids_app.corrections.finding import DISCS_KIND, Correction
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L


@pytest.fixture(scope="module")
def neck():
    return render_phantom(3, Acquisition(fov="cervical", lr_extent=40.0))


def _centre(labels: np.ndarray, label: int) -> np.ndarray:
    """Voxel at a disc's centroid, or at a vertebral body's centre (midway between the
    centroids of its two discs: the centroid of the whole vertebra lies in its arch)."""
    if label in BODIES:
        above, below = BODIES[label]
        return (_centre(labels, above) + _centre(labels, below)) // 2
    return np.rint(np.argwhere(labels == label).mean(0)).astype(int)


BODIES = {13: (63, 64), 15: (65, 66)}  # C3, C5 and their discs


def _points_file(tmp_path: Path, neck, where: dict[int, int]) -> Correction:
    """A disc-point file with SCT value -> the centre voxel of label `where[value]`."""
    labels = np.asarray(neck.labels.dataobj)
    points = np.zeros(labels.shape, np.uint8)
    for value, label in where.items():
        points[tuple(_centre(labels, label))] = value
    path = tmp_path / "sub-01_T2w_label-discs_dlabel.nii.gz"
    nib.save(nib.Nifti1Image(points, neck.labels.affine), path)
    return Correction(DISCS_KIND, path, "sub-01/anat/sub-01_T2w")


def test_body_centre_labels_are_refused_naming_the_point(tmp_path, neck):
    corr = _points_file(tmp_path, neck, {3: 13, 5: 15})  # C3 and C5 body centres
    with pytest.raises(CorrectionError) as err:
        check({DISCS_KIND: corr}, neck.image, np.asarray(neck.labels.dataobj))
    line = str(err.value)
    assert "\n" not in line and str(corr.path) in line
    assert "disc point C2-C3 at (" in line  # value 3 read as C2-C3, refused first
    assert "vertebral body of C3" in line and "body-centre label file" in line


def test_points_on_the_discs_are_accepted(tmp_path, neck):
    corr = _points_file(tmp_path, neck, {3: 63, 5: 65})  # C2-C3 and C4-C5 disc centres
    fixed = check({DISCS_KIND: corr}, neck.image, np.asarray(neck.labels.dataobj))
    assert fixed.localizer is not None
    assert {63, 65} <= set(np.unique(np.asarray(fixed.localizer.dataobj)))


def test_a_point_away_from_any_disc_says_where_it_lies(tmp_path, neck):
    labels = np.asarray(neck.labels.dataobj)
    corr = _points_file(tmp_path, neck, {3: 63, 5: L.CORD})  # second point in the cord
    expected = (
        r"disc point C4-C5 at .* lies in the spinal c(ord|anal), \d+ mm from the nearest disc"
    )
    with pytest.raises(CorrectionError, match=expected):
        check({DISCS_KIND: corr}, neck.image, labels)
