"""Stage 6, QC: the image's QC files (measures, flags, previews); QC never costs a
segmentation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bids_app import qc
from bids_app.bids.discovery import ImageJob
from bids_app.plumbing.errors import one_line
from bids_app.qc.records import landmark_list
from bids_app.run.stages.base import Segmented, StageOutput

log = logging.getLogger(__name__)


class QCStage:
    """Writes each image's QC files into the output folder."""

    name = "QC"
    # May run in a worker (it holds the GIL): reads these, the source image and landmarks.
    worker_reads: tuple[str, ...] | None = ("final", "levels")

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def applies(self, job: ImageJob) -> bool:
        return True

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """QC files of one image (relative to output_dir); a failure is the stage's problem
        (the image becomes "partial") but the outputs stay."""
        job, result = image.job, image.result
        try:
            summary = qc.write_image_qc(
                image.image,
                result.native.get("final"),
                result.native.get("levels"),
                output_dir=self.output_dir,
                source=job.relpath,
                suffix=job.suffix,
                landmarks=landmark_list(result.landmarks),
            )
        except Exception as e:  # QC is secondary: keep the segmentation, report the problem
            log.exception("%s: QC failed", job.name)
            return StageOutput([], f"QC: {one_line(e, with_type=True)}")
        return StageOutput([Path(p).as_posix() for p in summary.get("outputs", [])])
