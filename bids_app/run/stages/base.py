"""What the stages share: the image as segmented, what a stage after segmentation hands back,
and how a disk error while writing outputs becomes exit 74."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import nibabel as nib

from bids_app.bids.discovery import ImageJob
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import EngineResult
from bids_app.plumbing.errors import ExitCode, UserError

Progress = Callable[[str], None]  # an image enters a named stage (may stop a cancelled run)


@dataclass(frozen=True)
class Segmented:
    """What the stages after segmentation are told: one image, its options and its result."""

    job: ImageJob
    options: SegmentOptions
    image: nib.Nifti1Image  # the source image as read (its own grid)
    result: EngineResult


@dataclass(frozen=True)
class StageOutput:
    """What a stage after segmentation hands back."""

    outputs: list[str] = field(default_factory=list)  # written, relative to output_dir
    problem: str | None = None  # makes the image partial and joins its reason


class AfterSegmentation(Protocol):
    """A stage that runs once an image is segmented (write, lesions, QC, ...).

    A stage keeps what it needs from the run (output folder, model, memory gate) from its
    constructor and is told the image per call; it never sees the run's other state.
    """

    name: str  # shown in the progress line and the debug log

    def applies(self, job: ImageJob) -> bool:
        """Whether the stage runs on this image."""
        ...

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """Do the stage's one job; `written` lists the outputs of the stages before it."""
        ...


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an OSError while writing outputs into exit 74 (the disk, not the image, failed)."""
    try:
        yield
    except OSError as e:
        raise UserError(
            ExitCode.IO_ERROR, f"{e.filename or what}: cannot write outputs ({e.strerror or e})"
        ) from e
