"""The two-step TotalSpineSeg pipeline on one image, in memory (docs/method.md §1.4).

One `SpineSegEngine` holds both nnU-Net models, loaded once, and is reused for every image:
no folder per step, no worker processes, no model reloads. It knows nothing of BIDS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from bids_app import labeling
from bids_app.engine import geometry as geo
from bids_app.engine.image_checks import check_image
from bids_app.engine.networks import Networks, Prediction, Predictor
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import EngineError, EngineResult
from bids_app.nnunet import REFERENCE_PRECISION, REFERENCE_TILE_STEP
from bids_app.nnunet.model import default_threads
from bids_app.nnunet.weights import WeightSet
from bids_app.plumbing.labels import CANAL, CORD, STEP1_CANAL, STEP1_CORD, STEP1_REGIONS, head_index

# Step-1 region heads holding the canal (canal + cord) and cord probabilities (§2.5).
CANAL_HEAD, CORD_HEAD = head_index(STEP1_REGIONS, "canal"), head_index(STEP1_REGIONS, "cord")
CROP_MARGIN = 10


@dataclass
class _Iso:
    """The input as the model sees it: canonical RAS, on the 1 mm torchio grid."""

    native: nib.Nifti1Image  # the 3-D input grid outputs return to
    image: nib.Nifti1Image  # 1 mm canonical image (input dtype)


def fast_mode_warning(options: SegmentOptions) -> str:
    """One line naming what differs from TotalSpineSeg's way of running the networks."""
    parts = []
    if options.tile_step != REFERENCE_TILE_STEP:
        parts.append(
            f"sliding-window tile step {options.tile_step} (TotalSpineSeg uses "
            f"{REFERENCE_TILE_STEP}; the patch is also fitted to images smaller than it)"
        )
    if options.precision != REFERENCE_PRECISION:
        parts.append(
            f"network precision {options.precision} (TotalSpineSeg: float32 on CPU, "
            "float16 autocast on GPU)"
        )
    return (
        f"fast mode: {', '.join(parts)}; the result differs slightly from the reference's "
        "(level markers may move, see the README)"
    )


def _numbered(out: labeling.LabelingOutput) -> labeling.LabelingOutput:
    """Refuse a labeling that numbered nothing (the reference then writes unlabelled bone)."""
    if not out.landmarks:
        raise labeling.LabelingError(
            "the landmark disc was only found in fragments too small to be discs: "
            "levels cannot be assigned; use a localizer or --assume-top-disc"
        )
    return out


class SpineSegEngine:
    """Both TotalSpineSeg steps around a predictor that holds the networks, loaded once.

    By default the networks live here, on `device`; a participant run that spreads images
    over devices passes its `bids_app.scheduling.DevicePool` as `predictor` instead. The
    engine itself holds no per-image state, so several threads may segment at once.
    """

    def __init__(
        self,
        weights: WeightSet,
        device: str = "auto",
        threads: int | None = None,
        *,
        predictor: Predictor | None = None,
    ):
        self.weights = weights
        self.threads = threads or default_threads()
        self.networks: Predictor = predictor or Networks(weights, device, self.threads)
        self.device = getattr(self.networks, "device", device)

    def close(self, cancel: bool = False) -> None:
        """Stop the device workers of a pooled predictor (a local one needs nothing)."""
        close = getattr(self.networks, "close", None)
        if close is not None:
            close(cancel)

    def segment(
        self,
        img: nib.Nifti1Image,
        options: SegmentOptions,
        *,
        loc: nib.Nifti1Image | None = None,
        name: str = "image",
        progress: Callable[[str], None] | None = None,
    ) -> EngineResult:
        """Segment one image; see `EngineResult` for the grids of what comes back.

        `options.assume_top_disc` (off by default like the reference) numbers the discs
        from the most superior one when neither a landmark nor the localizer is found in
        step 1; step 2 then follows step 1's numbering. Found landmarks always win.

        Raises EngineError when nothing can be produced; a failure after step 1 (e.g. step-2
        labeling) is recorded in `result.errors` and the step-1 outputs are still returned.
        """
        res = EngineResult(device=str(self.device))
        devices: list[str] = []
        top_disc = options.assume_top_disc
        checked = check_image(img, name)  # before anything is allocated for the image
        img = checked.image  # type: ignore[assignment]  # same class as the input
        res.warnings.extend(checked.warnings)
        if options.differs_from_reference:
            res.warnings.append(fast_mode_warning(options))

        @contextmanager
        def stage(label: str) -> Iterator[None]:
            if progress:
                progress(label)
            t0 = time.perf_counter()
            yield
            res.timings[label] = round(time.perf_counter() - t0, 3)

        with stage("preprocess"):
            src = self._prepare(img)
            loc_iso = None
            if loc is not None:
                loc3 = geo.average_4d(loc) if loc.ndim == 4 else loc
                loc_iso = geo.labels_onto(
                    np.asanyarray(loc3.dataobj).round(), loc3.affine, src.image
                )
        iso_img = src.image
        data = np.asanyarray(iso_img.dataobj)

        with stage("step1_network"):
            pred1 = self._predict(
                "step1", data[None], res, devices, options, return_probabilities=True
            )
            raw1, prob1 = pred1.labels, pred1.probabilities
        with stage("step1_labeling"):
            raw1 = labeling.largest_component(raw1)
            if not raw1.any():
                raise EngineError(f"{name}: step 1 found no spine structure in the image")
            try:
                out1 = _numbered(labeling.label_step1(raw1, loc_iso, top_disc))
            except labeling.LabelingError as err:
                # Without a landmark the levels are unknown, but cord and canal are still
                # meaningful: keep them so the user gets what can be trusted.
                res.errors.append(f"step 1 labeling: {err}")
                step1 = np.select(
                    [np.isin(raw1, STEP1_CORD), np.isin(raw1, STEP1_CANAL)], [CORD, CANAL], 0
                ).astype(np.uint8)
            else:
                step1 = out1.labels
                res.landmarks["step1"] = out1.landmarks
            step1 = labeling.fill_canal(step1)
            assert prob1 is not None
            canal_soft = labeling.extract_soft(prob1[CANAL_HEAD], step1, (CORD, CANAL))
            cord_soft = labeling.extract_soft(prob1[CORD_HEAD], step1, (CORD,))
            del prob1
            res.kept.update(canal_soft=canal_soft, cord_soft=cord_soft)
            levels = None
            if not res.errors:
                try:
                    levels = labeling.extract_levels(step1)
                except labeling.LabelingError as err:
                    res.warnings.append(f"levels: {err}")
        iso_out = {"step1": step1, "canal_soft": canal_soft, "cord_soft": cord_soft}
        if levels is not None:
            iso_out["levels"] = levels

        if not options.step1_only and not res.errors:
            final = self._step2(data, step1, loc_iso, top_disc, res, stage, devices, options)
            if final is not None:
                iso_out["final"] = final

        with stage("to_native"):
            self._to_native(iso_out, src, res, keep_iso=options.iso)
        res.device = ",".join(dict.fromkeys(devices)) or res.device
        return res

    def _predict(
        self,
        step: str,
        channels: np.ndarray,
        res: EngineResult,
        devices: list[str],
        options: SegmentOptions,
        return_probabilities: bool = False,
    ) -> Prediction:
        """Run a step's network; its device time is `<step>_device` (the stage time also
        counts any wait for a free device)."""
        pred = self.networks.predict(
            step, channels, return_probabilities, options.tile_step, options.precision
        )
        res.timings[f"{step}_device"] = round(pred.seconds, 3)
        res.kept[step] = pred.labels
        if len(channels) > 1:  # the guide channels it was given (step 2: alternate discs)
            res.kept[f"{step}_guide"] = channels[1:].astype(np.uint8)
        devices.append(pred.device)
        return pred

    def _prepare(self, img: nib.Nifti1Image) -> _Iso:
        """4-D average, canonical orientation, 1 mm resampling (docs/method.md §1.4 steps 5-7)."""
        img3 = geo.average_4d(img)
        return _Iso(native=img3, image=geo.resample_to_iso(geo.to_canonical(img3)))

    def _step2(
        self,
        data: np.ndarray,
        step1: np.ndarray,
        loc_iso: np.ndarray | None,
        top_disc: int | None,
        res: EngineResult,
        stage: Callable[[str], AbstractContextManager[None]],
        devices: list[str],
        options: SegmentOptions,
    ) -> np.ndarray | None:
        """Crop to step 1 +- 10 voxels, add the alternate-disc channel, label, un-crop."""
        box = labeling.bbox_slices(step1, CROP_MARGIN)
        if box is None:
            res.errors.append("step 2: step 1 produced no labels to crop around")
            return None
        with stage("step2_network"):
            channels = np.stack(
                [
                    data[box].astype(np.float32),
                    labeling.extract_alternate(step1[box]).astype(np.float32),
                ]
            )
            raw2 = self._predict("step2", channels, res, devices, options).labels
        with stage("step2_labeling"):
            raw2 = labeling.largest_component(raw2)
            # When step 1 had to number from the assumed top disc, step 2 keeps that
            # numbering (step 1 as its localizer); otherwise it labels as the reference does.
            assumed = any(n.startswith("assumed") for n in res.landmarks.get("step1", []))
            loc2 = step1 if loc_iso is None and assumed else loc_iso
            try:
                out2 = _numbered(
                    labeling.label_step2(raw2, None if loc2 is None else loc2[box], top_disc)
                )
            except labeling.LabelingError as err:
                res.errors.append(f"step 2 labeling: {err}")
                return None
            # Numbering that came from step 1 under an assumption keeps that provenance.
            from_step1 = loc2 is step1
            res.landmarks["step2"] = res.landmarks["step1"] if from_step1 else out2.landmarks
            final = np.zeros(step1.shape, np.uint8)
            final[box] = labeling.fill_canal(out2.labels)
        return final

    def _to_native(
        self, iso_out: dict[str, np.ndarray], src: _Iso, res: EngineResult, keep_iso: bool
    ) -> None:
        """Back onto the input grid: nearest for labels, linear for soft maps, points moved
        one voxel each (docs/method.md §1.4 step 23). Step-1 outputs come from the 1 mm
        grid's affine as the reference's step-1 files carry it (`geo.exported_affine`)."""
        aff = src.image.affine
        step1_aff = geo.exported_affine(geo.to_canonical(src.native))
        ref = src.native
        for key, arr in iso_out.items():
            from_aff = aff if key == "final" else step1_aff
            if key in ("canal_soft", "cord_soft"):
                native = geo.soft_onto(arr, from_aff, ref)
            elif key == "levels":
                native = geo.points_onto(arr, from_aff, ref)
            else:
                native = geo.labels_onto(arr, from_aff, ref)
            res.native[key] = geo.image_like(native, ref.affine, ref)
            if keep_iso:
                res.iso[key] = geo.image_like(arr, aff, src.image)
