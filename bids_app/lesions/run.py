"""The lesion step of one image, after its spine result: model input, network, measures.

The lesion network sees what the spine networks see (canonical orientation, SpineSeg's 1 mm
grid), cropped to SpineSeg's spinal canal plus `MARGIN_MM` on every side: the cord is all it
has to look at, and the crop keeps a whole-spine image cheap. Without a canal the whole image
is used. The mask goes back to the input grid by nearest neighbour and is measured there.
In a participant run the call goes to the device pool of the spine networks, where each
device loads the lesion model once (`LesionModels`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from bids_app import labeling
from bids_app.engine import geometry as geo
from bids_app.engine.image_checks import check_image
from bids_app.engine.memory import F32, U8, step_peak_bytes
from bids_app.lesions.labels import read_labels
from bids_app.lesions.measures import LesionReport, measure_lesions
from bids_app.lesions.model import LesionModels
from bids_app.lesions.weights import LesionWeights
from bids_app.plumbing.labels import CANAL, CORD

MARGIN_MM = 16
Box = tuple[slice, slice, slice]


@dataclass
class ModelInput:
    """The lesion network's input: the 1 mm canonical image and the crop box on it."""

    iso: nib.Nifti1Image
    box: Box

    @property
    def crop(self) -> np.ndarray:
        return np.asanyarray(self.iso.dataobj)[self.box].astype(np.float32)


def model_input(img: nib.Nifti1Image, spine: nib.Nifti1Image | None) -> ModelInput:
    """Canonical 1 mm image and the box of the canal (cord included) + MARGIN_MM on it.

    The image goes through the spine engine's input checks first, so the lesion network sees
    what the spine networks saw (NaN voxels set to 0: nnU-Net's normalisation would spread
    them over the whole crop).
    """
    checked: nib.Nifti1Image = check_image(img, "image").image  # type: ignore[assignment]
    iso = geo.resample_to_iso(geo.to_canonical(geo.average_4d(checked)))
    box: Box | None = None
    if spine is not None:
        labels = geo.labels_onto(np.asanyarray(spine.dataobj), spine.affine, iso)
        box = labeling.bbox_slices(np.isin(labels, (CORD, CANAL)), MARGIN_MM)
    return ModelInput(iso, box or (slice(None), slice(None), slice(None)))


def spine_for_lesions(
    native: Mapping[str, nib.Nifti1Image],
) -> tuple[str, nib.Nifti1Image | None, list[str]]:
    """The spine labels the lesions are placed on, from an engine result's native outputs:
    (result key, image or None, warnings). The final labels, else step 1's, said so."""
    if native.get("final") is not None:
        return "final", native["final"], []
    return "step1", native.get("step1"), ["levels from the step-1 labels"]


@dataclass
class LesionResult:
    """The lesion mask (uint8 0/1, input grid), its measures, where and how long it ran.

    `network` is what the network gave, to keep for a later run ("lesion": the uint8 mask
    of the crop on the 1 mm grid, "box": the crop's [start, stop) per axis, "device");
    empty when a kept output was used instead of the network.
    """

    mask: nib.Nifti1Image
    report: LesionReport
    device: str
    seconds: float
    network: dict[str, np.ndarray] = field(default_factory=dict)


def _bounds(inp: ModelInput) -> np.ndarray:
    """[start, stop) of the crop on the 1 mm grid, per axis (int64, shape (3, 2))."""
    return np.array(
        [s.indices(n)[:2] for s, n in zip(inp.box, inp.iso.shape[:3], strict=True)], np.int64
    )


# Runs a call on a free device's worker (a `DevicePool.run`); the worker has `.device`.
DeviceRunner = Callable[[Callable[[Any], Any]], Any]


class LesionRunner:
    """The lesion step for every image of a run; the model is loaded once per device."""

    def __init__(
        self,
        weights: LesionWeights,
        suffixes: tuple[str, ...] = ("T2w",),
        threads: int | None = None,
    ):
        self.weights, self.suffixes = weights, suffixes
        self.models = LesionModels(weights, threads)
        self.heads = read_labels(weights.trainer_dir / "dataset.json").heads

    def applies(self, suffix: str) -> bool:
        return suffix in self.suffixes

    def memory_bytes(self, img: nib.Nifti1Image) -> int:
        """Estimated peak bytes of the lesion step of `img`, from its header alone.

        The crop is unknown before the spine labels exist, so the whole 1 mm grid bounds it:
        the network call (`engine.memory.step_peak_bytes`, one channel, this model's heads),
        the float32 1 mm image it is cut from, and the uint8 masks on the 1 mm and input grids.
        """
        shape, _ = geo.iso_grid(img)
        voxels = shape[0] * shape[1] * shape[2]
        native = int(np.prod(img.shape[:3]))
        network = step_peak_bytes(shape, 1, self.heads, probabilities=False)
        return network + F32 * voxels + U8 * (voxels + native)

    def segment(
        self,
        img: nib.Nifti1Image,
        spine: nib.Nifti1Image | None,
        run_on: DeviceRunner | None = None,
        device: str = "cpu",
        kept: Mapping[str, np.ndarray] | None = None,
    ) -> LesionResult:
        """Lesions of one image, given its spine labels (final or step 1) on its grid.

        `run_on` sends the network call to a device pool; without it, it runs on `device`.
        `kept` is the `network` of an earlier result for the same image and model: when its
        crop is this one (a correction that left the canal as it was), the network's input
        is the same, so its output is taken and no network runs.
        """
        inp = model_input(img, spine)
        bounds = _bounds(inp)
        network: dict[str, np.ndarray] = {}
        if kept is not None and "box" in kept and np.array_equal(kept["box"], bounds):
            lesion, device, seconds = kept["lesion"], str(kept["device"]), 0.0
        else:
            crop = inp.crop

            def call(device: str) -> tuple[np.ndarray, str, float]:
                t0 = time.perf_counter()
                lesion, _ = self.models.on(device).predict(crop, (1.0, 1.0, 1.0))
                return lesion, device, time.perf_counter() - t0

            if run_on is not None:
                lesion, device, seconds = run_on(lambda nets: call(str(nets.device)))
            else:
                lesion, device, seconds = call(device)
            network = {"lesion": lesion.astype(np.uint8), "box": bounds, "device": np.array(device)}
        full = np.zeros(inp.iso.shape[:3], np.uint8)
        full[inp.box] = lesion
        ref = geo.average_4d(img)
        native = geo.labels_onto(full, inp.iso.affine, ref)
        spine_data = None if spine is None else np.asanyarray(spine.dataobj)
        report = measure_lesions(native, spine_data, ref.affine)
        assert report.ids is not None
        mask = geo.image_like((report.ids > 0).astype(np.uint8), ref.affine, ref)
        return LesionResult(mask, report, device, seconds, network)
