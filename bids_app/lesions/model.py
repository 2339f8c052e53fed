"""A lesion nnU-Net (SCIseg-like), loaded once per device; several folds are ensembled as
nnU-Net does (`NnUNetModel.load(checkpoints=...)`). What its outputs mean:
`bids_app.lesions.labels`.
"""

from __future__ import annotations

import threading

import numpy as np

from bids_app.lesions.labels import read_labels
from bids_app.lesions.weights import LesionWeights
from bids_app.nnunet.weights import WeightsError


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
