"""The shipped demo lesion model, end to end on a held-out phantom (seeds >= 6000).

It was trained on phantoms only; this checks that install, verification, loading, the
model input, the network and the measures fit together, on lesions it should find.
"""

from __future__ import annotations

import numpy as np

from bids_app.lesions.run import LesionRunner
from bids_app.lesions.weights import DEMO_LESION, resolve_lesion_model
from bids_app.phantom.anatomy import Lesion
from bids_app.phantom.lesions import lesion_truth
from bids_app.phantom.render import Acquisition, render_phantom

LESIONS = (Lesion("C4", 15.0, 4.0), Lesion("C7", 12.0, 3.5, offset=0.5))


def test_demo_lesion_model_finds_and_measures_phantom_lesions():
    weights = resolve_lesion_model("demo")
    assert weights.folder == DEMO_LESION
    assert sum(p.stat().st_size for p in DEMO_LESION.rglob("*") if p.is_file()) < 10e6
    ph = render_phantom(6500, Acquisition(fov="cervical", lr_extent=48.0), lesions=LESIONS)
    result = LesionRunner(weights, threads=1).segment(ph.image, ph.labels)
    truth_ids = np.asarray(ph.lesions.dataobj)
    pred = result.report.ids
    assert pred is not None
    for k, _ in enumerate(LESIONS, start=1):
        hit = pred[truth_ids == k]
        assert (hit > 0).mean() > 0.3, f"lesion {k} not found"
        row = result.report.rows[int(np.bincount(hit[hit > 0]).argmax()) - 1]
        truth = lesion_truth(ph.anatomy, k - 1)
        assert abs(row["length_mm"] - truth["length_mm"]) <= 4.0, row
        assert truth["level_main"] in row["levels"].split(",")
    assert len(result.report.rows) == len(LESIONS)  # no false positive


def test_demo_lesion_model_leaves_a_lesion_free_cord_empty():
    ph = render_phantom(6501, Acquisition(fov="cervical", voxel="sag3", axcodes="PSR"))
    result = LesionRunner(resolve_lesion_model("demo"), threads=1).segment(ph.image, ph.labels)
    assert result.report.rows == [] and not np.asarray(result.mask.dataobj).any()


def test_nan_voxels_do_not_reach_the_lesion_network():
    """The spine engine sets NaN voxels to 0 (with a warning); the lesion step must see the
    same image, or nnU-Net's normalisation turns the whole crop into NaN."""
    ph = render_phantom(6500, Acquisition(fov="cervical", lr_extent=48.0), lesions=LESIONS)
    data = np.asanyarray(ph.image.dataobj).astype(np.float32)
    data[:, :, :2] = np.nan  # two edge slices lost, as a broken converter leaves them
    img = ph.image.__class__(data, ph.image.affine, ph.image.header)
    result = LesionRunner(resolve_lesion_model("demo"), threads=1).segment(img, ph.labels)
    truth_ids = np.asarray(ph.lesions.dataobj)
    pred = result.report.ids
    assert pred is not None
    assert len(result.report.rows) == len(LESIONS)
    for k, _ in enumerate(LESIONS, start=1):
        assert (pred[truth_ids == k] > 0).mean() > 0.3, f"lesion {k} not found"
