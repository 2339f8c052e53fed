"""What the engine hands back: images in memory, each on a stated grid, plus metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import nibabel as nib
import numpy as np

from bids_app.engine.options import SegmentOptions


class EngineError(Exception):
    """A clear, one-line failure of one image (bad input, no landmark, empty prediction)."""


@dataclass
class EngineResult:
    """Outputs of one image.

    Every image in `native` is on the input image's grid (same shape and affine as the input,
    3-D); every image in `iso` is on the 1 mm canonical (RAS) model grid and is only filled
    when iso outputs were asked for. Keys: "final" (uint8 final labels, docs/method.md §4.5),
    "step1" (uint8 step-1 labels, §4.4), "cord_soft" and "canal_soft" (float32 in [0, 1]),
    "levels" (uint8 single-voxel level markers, §4.6). "final" is missing in step-1-only mode
    or when step 2 failed (see `errors`).
    """

    native: dict[str, nib.Nifti1Image] = field(default_factory=dict)
    iso: dict[str, nib.Nifti1Image] = field(default_factory=dict)
    landmarks: dict[str, list[str]] = field(default_factory=dict)  # step -> landmark discs used
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # non-fatal failures (e.g. step 2 labeling)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    device: str = "cpu"
    # What the networks gave, on the 1 mm grid (see `bids_app.corrections.replay`): enough to
    # relabel the image later without running them again.
    kept: dict[str, np.ndarray] = field(default_factory=dict)


class Engine(Protocol):
    """What the participant run needs of an engine (the real one, or a test's fake)."""

    @property
    def device(self) -> object:
        """Where the networks run ("cpu", "cuda:0"; a torch.device for the real engine)."""
        ...

    @property
    def threads(self) -> int | None:
        """Threads of the networks."""
        ...

    def segment(
        self,
        img: nib.Nifti1Image,
        options: SegmentOptions,
        *,
        loc: nib.Nifti1Image | None = None,
        name: str = "image",
        progress: Callable[[str], None] | None = None,
    ) -> EngineResult:
        """Segment one image (see `EngineResult` for the grids); raises EngineError."""
        ...

    def close(self, cancel: bool = False) -> None:
        """Release the networks; with `cancel`, drop queued network calls (run stopping)."""
        ...
