"""Stage 3, segment: read the image, wait until its arrays fit the memory budget, run the
engine; and what makes a segmented image partial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib

from bids_app.engine.geometry import iso_grid
from bids_app.engine.memory import estimate_peak_bytes
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import Engine, EngineResult
from bids_app.plumbing.labels import STEP1_REGIONS, STEP2_REGIONS
from bids_app.run.scheduling import MemoryGate
from bids_app.run.segmentation import (
    ImageOutOfMemory,
    check_input_header,
    load_image,
    segment_image,
)
from bids_app.run.stages.base import Progress
from bids_app.run.stages.decide import ImagePlan


class SegmentStage:
    """Runs the networks on one image at a time through the run's engine (`engine` creates
    it on first need) inside the run's memory gate."""

    def __init__(self, output_dir: Path, engine: Callable[[], Engine], memory: MemoryGate):
        self.output_dir, self.engine, self.memory = output_dir, engine, memory

    def __call__(
        self, plan: ImagePlan, progress: Progress, loc: nib.Nifti1Image | None = None
    ) -> tuple[nib.Nifti1Image, EngineResult]:
        """Load the source (and localizer labels, unless `loc` is given) once, check its
        header, wait until its arrays fit in the memory budget, then run the engine: an
        unreadable, malformed or oversized file fails (ImageFailure) before any model is
        loaded or any array allocated."""
        job = plan.job
        progress("read")
        img = load_image(job.path)
        if loc is None and plan.options.localizer:
            loc = load_image(self.output_dir / plan.options.localizer)
        check_input_header(img, job.name)  # a 2-D or truncated file is named as such
        need = image_memory(img, plan.options)
        if not self.memory.fits(need):
            raise ImageOutOfMemory(
                f"needs about {need / 2**30:.1f} GiB for its arrays on the 1 mm grid, more "
                f"than the {self.memory.capacity / 2**30:.1f} GiB the memory budget leaves "
                "for images (raise --mem-mb or run it on a node with more memory)"
            )
        progress("waiting for memory")
        with self.memory.reserve(need, check=lambda: progress("waiting for memory")):
            return img, segment_image(
                self.engine(), img, plan.options, name=job.name, loc=loc, progress=progress
            )


def image_memory(img: nib.Nifti1Image, options: SegmentOptions) -> int:
    """Estimated peak bytes of the image's arrays, from its header alone."""
    shape, _ = iso_grid(img)
    return estimate_peak_bytes(
        shape,
        len(STEP1_REGIONS),
        len(STEP2_REGIONS),
        input_itemsize=img.get_data_dtype().itemsize,
        step1_only=options.step1_only,
    )


def segmentation_problems(options: SegmentOptions, result: EngineResult) -> list[str]:
    """What makes a segmented image partial: step 2 failed, or no final labels came back."""
    if result.errors:
        return list(result.errors)
    if "final" not in result.native and not options.step1_only:
        return ["no final labels returned"]
    return []
