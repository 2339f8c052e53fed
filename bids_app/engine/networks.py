"""The two TotalSpineSeg networks of one device, loaded once; and what a prediction returns.

The engine asks for predictions by step name through `predict()`; whether they run here, in
the calling thread, or on one of several devices behind a queue (`bids_app.run.scheduling`) is
the caller's choice. Each model is checked against the label tables when it is loaded, so
wrong weights are refused before an image is labelled with them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bids_app.nnunet import REFERENCE_PRECISION, REFERENCE_TILE_STEP
from bids_app.nnunet.model import NnUNetModel, resolve_device
from bids_app.nnunet.weights import WeightsError, WeightSet
from bids_app.plumbing.labels import STEP1_REGIONS, STEP2_REGIONS

STEPS = ("step1", "step2")
# Output heads each step's network must have: one per region of the label tables.
HEADS = {"step1": len(STEP1_REGIONS), "step2": len(STEP2_REGIONS)}


@dataclass
class Prediction:
    """One network call: labels and (when asked) per-head probabilities on the input grid of
    the call (the 1 mm model grid or its step-2 crop), where and how long it ran."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    device: str
    seconds: float  # compute time on the device, without any wait for it


class Predictor(Protocol):
    """What the engine needs to run a step's network on an array of channels."""

    def predict(
        self,
        step: str,
        channels: np.ndarray,
        return_probabilities: bool = False,
        tile_step: float = REFERENCE_TILE_STEP,
        precision: str = REFERENCE_PRECISION,
    ) -> Prediction: ...


class Networks:
    """Both steps' models on one device, loaded on first use and kept (never per image)."""

    def __init__(self, weights: WeightSet, device: str = "auto", threads: int | None = None):
        self.weights = weights
        self.device = resolve_device(device)
        self.threads = threads
        self._models: dict[str, NnUNetModel] = {}
        self._lock = threading.Lock()  # two threads asking at once load the model once

    def warm(self, *steps: str) -> Networks:
        """Load these steps' models now (a device worker does it before the first image
        asks); returns self."""
        for step in steps:
            self.model(step)
        return self

    def model(self, step: str) -> NnUNetModel:
        with self._lock:
            if step not in self._models:
                self._models[step] = self._load(step)
            return self._models[step]

    def _load(self, step: str) -> NnUNetModel:
        folder = self.weights.step1 if step == "step1" else self.weights.step2
        if folder is None:
            raise WeightsError(f"{self.weights.root}: no {step} model in the weights")
        model = NnUNetModel.load(folder, self.device, threads=self.threads)
        if model.num_outputs != HEADS[step]:
            raise WeightsError(
                f"{folder}: the network has {model.num_outputs} outputs, the {step} regions "
                f"of TotalSpineSeg need {HEADS[step]}: these are not {step} weights"
            )
        return model

    def predict(
        self,
        step: str,
        channels: np.ndarray,
        return_probabilities: bool = False,
        tile_step: float = REFERENCE_TILE_STEP,
        precision: str = REFERENCE_PRECISION,
    ) -> Prediction:
        model = self.model(step)
        t0 = time.perf_counter()
        labels, probabilities = model.predict(
            channels,
            return_probabilities=return_probabilities,
            tile_step=tile_step,
            precision=precision,
        )
        return Prediction(labels, probabilities, str(self.device), time.perf_counter() - t0)


class _Pool(Protocol):
    devices: tuple[str, ...]

    def run(self, call: Callable[[Networks], Prediction]) -> Prediction: ...

    def close(self, cancel: bool = False) -> None: ...


class PooledNetworks:
    """A `Predictor` whose calls run on whichever device of a `DevicePool` is free (each
    device holding its own `Networks`)."""

    def __init__(self, pool: _Pool):
        self.pool = pool
        self.device = ",".join(pool.devices)

    def predict(
        self,
        step: str,
        channels: np.ndarray,
        return_probabilities: bool = False,
        tile_step: float = REFERENCE_TILE_STEP,
        precision: str = REFERENCE_PRECISION,
    ) -> Prediction:
        return self.pool.run(
            lambda nets: nets.predict(step, channels, return_probabilities, tile_step, precision)
        )

    def close(self, cancel: bool = False) -> None:
        self.pool.close(cancel)
