"""Relabeling from kept network outputs and outputs from a corrected segmentation, no network.

A "truth predictor" stands in for the networks: it answers with the phantom's own step-1 and
step-2 targets, landmark classes removed, so the levels can only come from an assumed top
disc or from disc points, which is what the correction loop is about.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_app import labeling
from bids_app.corrections import checking, finding
from bids_app.corrections.kept import load_kept, save_kept
from bids_app.corrections.replay import KeptMismatch, from_manual, relabel
from bids_app.engine import geometry as geo
from bids_app.engine.networks import Prediction
from bids_app.engine.options import SegmentOptions
from bids_app.engine.pipeline import CANAL_HEAD, CORD_HEAD, SpineSegEngine
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.phantom.targets import step1_target, step2_target
from bids_app.plumbing import labels as L


class TruthPredictor:
    """Perfect networks that never find a landmark disc (classes 2-5 become plain discs)."""

    device = "cpu"

    def __init__(self, truth_iso: np.ndarray):
        self.truth = truth_iso
        self.calls: list[str] = []

    def predict(self, step, channels, return_probabilities=False, tile_step=0.5, precision="auto"):
        self.calls.append(step)
        if step == "step1":
            labels = step1_target(self.truth)
            probs = np.zeros((len(L.STEP1_REGIONS), *labels.shape), np.float32)
            probs[CANAL_HEAD] = np.isin(labels, (8, 9)) * 0.9
            probs[CORD_HEAD] = (labels == 9) * 0.8
        else:
            box = labeling.bbox_slices(self.truth > 0, 10)
            labels, channel = step2_target(self.truth[box])
            assert labels.shape == channels.shape[1:]
            assert np.array_equal(channel, channels[1]), "guide channel parity"
            probs = None
        labels[np.isin(labels, (2, 3, 4, 5))] = 1
        return Prediction(labels, probs, "cpu", 0.01)


@pytest.fixture(scope="module")
def phantom():
    return render_phantom(5100, Acquisition(fov="cervical", axcodes="PSR", lr_extent=48.0))


@pytest.fixture(scope="module")
def truth(phantom) -> np.ndarray:
    return np.asarray(phantom.labels.dataobj).astype(np.uint8)


@pytest.fixture(scope="module")
def first_run(phantom, truth):
    """The automatic run, numbered from a wrong assumed top disc (C3-C4 on a scan from C1)."""
    src = geo.resample_to_iso(geo.to_canonical(phantom.image))
    truth_iso = geo.labels_onto(truth, phantom.image.affine, src)
    engine = SpineSegEngine(None, threads=1, predictor=TruthPredictor(truth_iso))  # type: ignore[arg-type]
    return engine.segment(phantom.image, SegmentOptions(assume_top_disc=64), name="phantom")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _sct_points(truth: np.ndarray, discs: dict[int, int]) -> np.ndarray:
    """SCT disc labels: one voxel (the disc's most posterior-central voxel) per disc."""
    out = np.zeros(truth.shape, np.uint8)
    for number, disc in discs.items():
        ijk = np.argwhere(truth == disc)
        centre = ijk.mean(axis=0)
        out[tuple(ijk[np.argmin(((ijk - centre) ** 2).sum(1))])] = number
    return out


def test_first_run_keeps_what_the_networks_gave(first_run) -> None:
    kept = first_run.kept
    assert {"step1", "step2", "step2_guide", "canal_soft", "cord_soft"} <= set(kept)
    assert all(v.dtype == np.uint8 for k, v in kept.items() if "soft" not in k)


def test_disc_points_fix_the_levels_without_a_network(tmp_path, phantom, truth, first_run):
    final = np.asarray(first_run.native["final"].dataobj)
    # The wrong assumption shifted every level: the truth's C2-C3 is called C3-C4.
    assert _dice(final == 64, truth == 63) > 0.8
    path = tmp_path / "sub-01_T2w_label-discs_dlabel.nii.gz"
    nib.save(nib.Nifti1Image(_sct_points(truth, {3: 63, 4: 64, 6: 66}), phantom.image.affine), path)
    points = checking.disc_points(
        finding.Correction(finding.DISCS_KIND, path, "sub-01/anat/sub-01_T2w"), phantom.image
    )
    assert sorted(points) == [63, 64, 66]
    loc = checking.points_localizer(points)
    res = relabel(phantom.image, first_run.kept, SegmentOptions(), device="cpu", loc=loc)
    fixed = np.asarray(res.native["final"].dataobj)
    for level in (63, 64, 65, 66, 12, 13, 14):
        assert _dice(fixed == level, truth == level) > 0.8, L.level_name(level)
    assert res.landmarks["step1"][0] == "localizer C2-C3"
    assert res.timings["step1_device"] == res.timings["step2_device"] == 0.0
    assert res.kept == {}


def test_kept_outputs_round_trip_and_refuse_another_image(tmp_path, first_run) -> None:
    path = tmp_path / "kept.npz"
    size = save_kept(path, first_run.kept, {"image": "abc"})
    assert 0 < size < 2_000_000
    kept = load_kept(path, {"image": "abc"})
    assert kept is not None and np.array_equal(kept["step1"], first_run.kept["step1"])
    assert load_kept(path, {"image": "other"}) is None
    assert load_kept(tmp_path / "missing.npz", {"image": "abc"}) is None


def test_a_changed_step2_input_asks_for_the_networks(phantom, first_run) -> None:
    kept = dict(first_run.kept)
    kept["step2_guide"] = 1 - kept["step2_guide"]
    with pytest.raises(KeptMismatch):
        relabel(phantom.image, kept, SegmentOptions(assume_top_disc=63), device="cpu")


def test_a_corrected_segmentation_is_taken_as_it_is(phantom, truth, first_run) -> None:
    res = from_manual(phantom.image, truth, SegmentOptions(iso=True), kept=first_run.kept)
    assert np.array_equal(np.asarray(res.native["final"].dataobj), truth)
    assert np.allclose(res.native["final"].affine, phantom.image.affine)
    step1 = np.asarray(res.native["step1"].dataobj)
    assert set(np.unique(step1)) <= {0, 1, 2, 11, 50, *L.DISCS}
    levels = np.asarray(res.native["levels"].dataobj)
    assert {3, 4, 5, 6, 7} <= set(np.unique(levels))  # C2-C3 ... C6-C7 marked
    assert "canal_soft" in res.native and "final" in res.iso
    assert res.landmarks == {"manual": ["corrected segmentation"]}
