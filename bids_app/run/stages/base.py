"""What the stages share: the image as segmented, what a stage after segmentation hands back,
and how a disk error while writing outputs becomes exit 74."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import nibabel as nib
import numpy as np

from bids_app.bids.discovery import ImageJob
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import EngineResult
from bids_app.plumbing.errors import ExitCode, UserError

if TYPE_CHECKING:
    from bids_app.run.scheduling import MemoryGate, StageWorkers

Progress = Callable[[str], None]  # an image enters a named stage (may stop a cancelled run)


@dataclass(frozen=True)
class Segmented:
    """What the stages after segmentation are told: one image, its options and its result."""

    job: ImageJob
    options: SegmentOptions
    image: nib.Nifti1Image  # the source image as read (its own grid)
    result: EngineResult

    def only(self, native: Sequence[str]) -> Segmented:
        """The same image with only the `native` results named (no 1 mm images, no kept
        network outputs): what a stage in a worker process is sent. A source image read from
        its file goes without the float copy nibabel may have cached (`get_fdata`): the
        worker reads the file instead of receiving 8 bytes per voxel through a pipe."""
        kept = {key: img for key, img in self.result.native.items() if key in native}
        source = copy.copy(self.image)  # the run's own image keeps its cache
        if not isinstance(source.dataobj, np.ndarray):
            source.uncache()
        result = replace(self.result, native=kept, iso={}, kept={})
        return replace(self, image=source, result=result)

    def nbytes(self) -> int:
        """Bytes of the image's arrays (its results' and the source's, as a worker holds
        them once read); a source not yet read counts its voxels in the file's type."""
        images = [self.image, *self.result.native.values(), *self.result.iso.values()]
        arrays = [a for a in self.result.kept.values() if isinstance(a, np.ndarray)]
        total = sum(a.nbytes for a in arrays)
        for img in images:
            data = img.dataobj
            if isinstance(data, np.ndarray):
                total += data.nbytes
            else:
                total += int(np.prod(img.shape)) * img.get_data_dtype().itemsize
            cached = getattr(img, "_fdata_cache", None)  # get_fdata's float copy
            total += cached.nbytes if isinstance(cached, np.ndarray) else 0
        return total


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
    # The `native` results the stage reads when it may run in a worker process (it must then
    # be picklable and read nothing else of the run); None: it runs in the image's thread.
    worker_reads: tuple[str, ...] | None

    def applies(self, job: ImageJob) -> bool:
        """Whether the stage runs on this image."""
        ...

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """Do the stage's one job; `written` lists the outputs of the stages before it."""
        ...


def run_stage(
    stage: AfterSegmentation,
    image: Segmented,
    written: Sequence[str],
    workers: StageWorkers,
    memory: MemoryGate,
    check: Callable[[], None],
) -> StageOutput:
    """`stage.run(image, written)`, in a worker process when the stage may run there and the
    run has workers. The worker gets a copy of what the stage reads (pickled through a pipe;
    a source image not yet read goes as its file's name and is read there): the bytes of
    that copy wait in the run's memory gate (`check` honours a cancel while waiting)."""
    if stage.worker_reads is None or not workers.processes:
        return stage.run(image, written)
    sent = image.only(stage.worker_reads)
    with memory.reserve(sent.nbytes(), check=check):
        return workers.call(stage.run, sent, list(written))


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an OSError while writing outputs into exit 74 (the disk, not the image, failed)."""
    try:
        yield
    except OSError as e:
        raise UserError(
            ExitCode.IO_ERROR, f"{e.filename or what}: cannot write outputs ({e.strerror or e})"
        ) from e
