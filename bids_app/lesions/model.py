"""A lesion nnU-Net (SCIseg-like), loaded once per device, and what its output means.

What is a lesion is read from the model's dataset.json, never assumed: the label whose name
contains "lesion". For a region-based model (SCIseg V2: `{"sc": [1, 2], "lesion": 2}`,
`regions_class_order [1, 2]`) nnU-Net writes, per voxel, the class of the last region head
that fired, so the lesion is the class that `regions_class_order` gives the lesion head; for
a plain-label model (SCT's MS model: `{"background": 0, "lesion": 1}`) it is the label's
value. Several folds are ensembled as nnU-Net does (`NnUNetModel.load(checkpoints=...)`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_app.lesions.weights import LesionWeights
from bids_app.nnunet.weights import WeightsError


@dataclass(frozen=True)
class LesionLabels:
    """Output values of the lesion model: the lesion, and the cord (lesion included)."""

    lesion: int
    cord: tuple[int, ...]  # empty when the model has no cord label
    heads: int  # network outputs dataset.json implies (regions, or classes with background)


def read_labels(dataset_json: Path) -> LesionLabels:
    """The lesion and cord output values declared by a model's dataset.json."""
    try:
        data = json.loads(dataset_json.read_text())
        labels = data["labels"]
        names = [k for k in labels if k != "background"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{dataset_json}: no readable `labels` ({e})") from e
    lesion = [k for k in names if "lesion" in k.lower()]
    if len(lesion) != 1:
        found = ", ".join(names) or "none"
        raise WeightsError(
            f"{dataset_json}: needs exactly one label named like 'lesion' (labels: {found}); "
            "not a lesion model"
        )
    cord = [k for k in names if k.lower() in ("sc", "cord", "spinal_cord", "spinalcord")]
    order = data.get("regions_class_order")
    regions = order is not None or any(isinstance(labels[k], list) for k in names)
    if regions:
        if not isinstance(order, list) or len(order) != len(names):
            raise WeightsError(
                f"{dataset_json}: region labels need a regions_class_order of {len(names)} values"
            )
        value = {k: int(order[i]) for i, k in enumerate(names)}
        heads = len(names)
    else:
        value = {k: int(labels[k]) for k in names}
        heads = len(names) + 1
    lesion_value = value[lesion[0]]
    cord_values = (value[cord[0]], lesion_value) if cord else ()
    return LesionLabels(lesion_value, cord_values, heads)


class LesionModel:
    """The lesion network of one device; `predict` returns the lesion (and cord) masks."""

    def __init__(self, weights: LesionWeights, device: str, threads: int | None = None):
        from bids_app.nnunet.model import NnUNetModel, resolve_device

        self.weights = weights
        self.labels = read_labels(weights.trainer_dir / "dataset.json")
        self.model = NnUNetModel.load(
            weights.trainer_dir.parent,
            resolve_device(device),
            threads=threads,
            checkpoints=weights.checkpoints,
        )
        if self.model.num_outputs != self.labels.heads:  # pragma: no cover (nnU-Net builds both)
            raise WeightsError(
                f"{weights.trainer_dir}: {self.model.num_outputs} outputs, dataset.json "
                f"declares {self.labels.heads}"
            )
        if self.model.num_input_channels != 1:
            raise WeightsError(
                f"{weights.trainer_dir}: takes {self.model.num_input_channels} input channels; "
                "SpineSeg runs lesion models on one image"
            )

    def predict(
        self, image: np.ndarray, spacing: tuple[float, float, float]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(lesion mask, cord mask or None) of a 3-D image (x, y, z) with this voxel size."""
        seg, _ = self.model.predict(image[None], spacing)
        cord = np.isin(seg, self.labels.cord) if self.labels.cord else None
        return seg == self.labels.lesion, cord


class LesionModels:
    """One LesionModel per device, each built on first use in the caller's thread (a device
    worker's), so a participant run loads it once per device."""

    def __init__(self, weights: LesionWeights, threads: int | None = None):
        self.weights, self.threads = weights, threads
        self._models: dict[str, LesionModel] = {}
        self._lock = threading.Lock()

    def on(self, device: str) -> LesionModel:
        with self._lock:
            if device not in self._models:
                self._models[device] = LesionModel(self.weights, device, self.threads)
            return self._models[device]
