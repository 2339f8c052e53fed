"""Phantom lesions: where they are drawn, how they look, and the truth written beside them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.phantom.anatomy import Lesion
from bids_app.phantom.bids_dataset import write_phantom_dataset
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L


def test_lesions_are_bright_on_t2w_inside_the_cord_and_leave_the_spine_unchanged():
    acq = Acquisition(fov="cervical", lr_extent=40.0)
    lesion = Lesion("C5", 12.0, 3.5)
    plain = render_phantom(31, acq)
    ph = render_phantom(31, acq, lesions=(lesion,))
    ids = np.asarray(ph.lesions.dataobj)
    spine = np.asarray(ph.labels.dataobj)
    assert np.array_equal(spine, np.asarray(plain.labels.dataobj))  # same anatomy and labels
    assert set(np.unique(ids)) == {0, 1} and np.all(spine[ids > 0] == L.CORD)
    t2 = np.asarray(ph.image.dataobj, float)
    cord = (spine == L.CORD) & (ids == 0)
    assert np.median(t2[ids > 0]) > 1.3 * np.median(t2[cord])
    t1 = np.asarray(
        render_phantom(
            31, Acquisition(fov="cervical", lr_extent=40.0, contrast="T1w"), lesions=(lesion,)
        ).image.dataobj,
        float,
    )
    assert np.median(t1[ids > 0]) < np.median(t1[cord])


def test_bad_lesions_are_refused():
    with pytest.raises(ValueError, match="no vertebra 'C9'"):
        render_phantom(31, lesions=(Lesion("C9", 10.0, 3.0),))
    with pytest.raises(ValueError, match="sizes must be > 0"):
        render_phantom(31, lesions=(Lesion("C4", -1.0, 3.0),))


def test_phantom_dataset_with_lesions_writes_their_truth(tmp_path):
    written = write_phantom_dataset(tmp_path / "ds", n_subjects=1, lesions=True)
    truth = tmp_path / "ds" / "derivatives" / "truth"
    masks = sorted(truth.rglob("*_label-lesion_*_mask.nii.gz"))
    assert len(masks) == len(written) == 3
    for mask in masks:
        meta = json.loads(mask.with_name(mask.name.replace(".nii.gz", ".json")).read_text())
        lesions = meta["Lesions"]
        assert [les["level"] for les in lesions] == ["C6", "T1"]  # drawn from the seed
        assert all(les["volume_mm3"] > 0 and les["levels"] for les in lesions)
        ids = np.asarray(nib.load(mask).dataobj)
        assert set(np.unique(ids)) == {0, 1, 2}
