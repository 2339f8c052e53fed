"""Redo an image from what its networks gave, or from a corrected segmentation: no network.

A correction changes the labeling, never what the networks saw: new disc points only change
which disc is which, so the raw network outputs of the first run (`EngineResult.kept`: the
step-1 and step-2 class maps, the step-2 guide channel and the two soft maps, all on the 1 mm
grid) are replayed through the same `SpineSegEngine.segment` by a predictor that serves them
instead of running a model. If the relabelled step 1 asks step 2 for another input (another
crop or alternate-disc channel), the kept step-2 output does not answer it: `KeptMismatch`,
and the caller runs the networks. A corrected final segmentation needs no network at all
(`from_manual`). Where the kept outputs are stored is `corrections.kept`. Knows nothing of
BIDS: arrays and images in, an `EngineResult` out; the engine does not know this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import nibabel as nib
import numpy as np

from bids_app import labeling
from bids_app.engine import geometry as geo
from bids_app.engine.image_checks import check_image
from bids_app.engine.networks import Prediction
from bids_app.engine.options import SegmentOptions
from bids_app.engine.pipeline import CANAL_HEAD, CORD_HEAD, SpineSegEngine
from bids_app.engine.result import EngineError, EngineResult
from bids_app.nnunet import REFERENCE_PRECISION, REFERENCE_TILE_STEP
from bids_app.plumbing.labels import CANAL, CORD, SACRUM, STEP1_REGIONS, VERTEBRAE

C1, C2 = sorted(VERTEBRAE)[:2]
STEP1_OTHER_BONE = 50  # step-1 label of every vertebra but C1, sacrum included


class KeptMismatch(EngineError):
    """The kept network outputs do not answer what this relabeling asks: run the networks."""


class ReplayPredictor:
    """Answers the engine's network calls with the kept outputs of an earlier run."""

    def __init__(self, kept: Mapping[str, np.ndarray], device: str):
        self.kept, self.device = kept, device

    def predict(
        self,
        step: str,
        channels: np.ndarray,
        return_probabilities: bool = False,
        tile_step: float = REFERENCE_TILE_STEP,
        precision: str = REFERENCE_PRECISION,
    ) -> Prediction:
        """The kept output of the first run (made with the tile step and precision the
        options hash holds, so `tile_step` and `precision` are the same here)."""
        labels = self.kept.get(step)
        if labels is None or labels.shape != channels.shape[1:]:
            raise KeptMismatch(f"no kept {step} output for this input")
        guide = self.kept.get(f"{step}_guide")
        if len(channels) > 1 and (guide is None or not np.array_equal(guide, channels[1:])):
            raise KeptMismatch(f"the {step} input changed with the new labels")
        probs = None
        if return_probabilities:  # only the soft maps' heads are read; zeros cost no memory
            probs = np.zeros((len(STEP1_REGIONS), *labels.shape), np.float32)
            probs[CANAL_HEAD] = self.kept["canal_soft"]
            probs[CORD_HEAD] = self.kept["cord_soft"]
        return Prediction(labels.copy(), probs, self.device, 0.0)


def relabel(
    img: nib.Nifti1Image,
    kept: Mapping[str, np.ndarray],
    options: SegmentOptions,
    *,
    device: str,
    loc: nib.Nifti1Image | None = None,
    name: str = "image",
    progress: Callable[[str], None] | None = None,
) -> EngineResult:
    """`SpineSegEngine.segment` with the kept network outputs (made on `device`) instead of
    the networks. Raises KeptMismatch when they cannot serve (run the networks then)."""
    engine = SpineSegEngine(None, threads=1, predictor=ReplayPredictor(kept, device))  # type: ignore[arg-type]
    res = engine.segment(img, options, loc=loc, name=name, progress=progress)
    res.kept = {}  # nothing new: the kept file stays as it is
    return res


def step1_labels(final: np.ndarray) -> np.ndarray:
    """Final labels in the step-1 scheme: every vertebra but C1, and the sacrum, become 50."""
    other_bone = np.isin(final, [v for v in VERTEBRAE if v != C1] + [SACRUM])
    return np.where(other_bone, STEP1_OTHER_BONE, final).astype(np.uint8)


def from_manual(
    img: nib.Nifti1Image,
    final: np.ndarray,
    options: SegmentOptions,
    *,
    kept: Mapping[str, np.ndarray] | None = None,
    name: str = "image",
) -> EngineResult:
    """Outputs from a corrected final segmentation on the image's grid, taken as it is.

    The final labels are `final` unchanged; step-1 labels and level markers are derived
    from it; the soft maps come from the kept step-1 outputs when there are any (they are
    the network's, which the correction does not change), else they are left out.
    """
    res = EngineResult(device="none")
    checked = check_image(img, name)
    res.warnings.extend(checked.warnings)
    native = geo.average_4d(checked.image)  # type: ignore[arg-type]
    shape, aff = geo.iso_grid(geo.to_canonical(native))
    iso_ref = nib.Nifti1Image(np.zeros(shape, np.uint8), aff)
    final_iso = geo.labels_onto(final, native.affine, iso_ref)
    iso = {"final": final_iso, "step1": step1_labels(final_iso)}
    native_out = {"final": final.astype(np.uint8), "step1": step1_labels(final)}
    try:
        iso["levels"] = labeling.extract_levels(final_iso, (CORD, CANAL), c1_label=C1, c2_label=C2)
        native_out["levels"] = geo.points_onto(iso["levels"], aff, native)
    except labeling.LabelingError as err:
        res.warnings.append(f"levels: {err}")
    if kept is not None and kept["canal_soft"].shape == shape:
        for key in ("canal_soft", "cord_soft"):
            iso[key] = kept[key]
            native_out[key] = geo.soft_onto(kept[key], aff, native)
    res.native = {k: geo.image_like(v, native.affine, native) for k, v in native_out.items()}
    if options.iso:
        res.iso = {k: geo.image_like(v, aff, iso_ref) for k, v in iso.items()}
    res.landmarks = {"manual": ["corrected segmentation"]}
    return res
