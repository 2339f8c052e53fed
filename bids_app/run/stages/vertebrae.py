"""Stage after the lesions, vertebral bodies: subregions, heights, grades and slips of every
image with final labels, their table and figure (see `bids_app.vertebrae`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.bids.derivatives import bids_prefix, final_output_relpath
from bids_app.bids.discovery import ImageJob
from bids_app.plumbing.errors import one_line
from bids_app.qc.geometry import image_data
from bids_app.run.stages.base import Segmented, StageOutput, writing
from bids_app.vertebrae.outputs import write_vertebra_outputs
from bids_app.vertebrae.preview import figure_path, write_figure
from bids_app.vertebrae.run import analyse

log = logging.getLogger(__name__)


class VertebraStage:
    """Writes each image's vertebral-body outputs; an image without final labels has none."""

    name = "vertebral bodies"
    # May run in a worker (per-voxel Python holds the GIL): reads these and the source image.
    worker_reads: tuple[str, ...] | None = ("final",)

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def applies(self, job: ImageJob) -> bool:
        return True

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """Parts image, table and figure of one image; an analysis failure is the stage's
        problem (the image becomes partial, its other outputs stay), a disk error exit 74."""
        final = image.result.native.get("final")
        if final is None:
            return StageOutput()
        job, out = image.job, self.output_dir
        try:
            # Read once: the heights and the figure both sample it.
            source = nib.Nifti1Image(image_data(image.image, np.float32), image.image.affine)
            result = analyse(final, source)
        except Exception as e:  # secondary measures: keep the segmentation, report why
            log.exception("%s: vertebral bodies failed", job.name)
            return StageOutput([], f"vertebral bodies: {one_line(e, with_type=True)}")
        spine = final_output_relpath(job.relpath, job.suffix)
        sources = [f"bids::{spine}" if spine in written else f"bids:raw:{job.relpath}"]
        with writing(job.name):
            outputs = write_vertebra_outputs(out, job.relpath, job.suffix, result, sources=sources)
            prefix = bids_prefix(Path(job.relpath).name, job.suffix)
            figure = figure_path(out, job.subject, prefix, job.suffix)
            try:
                if write_figure(figure, source, result.measures):
                    outputs.append(figure.relative_to(out).as_posix())
            except (ValueError, OSError) as e:  # a missing picture must not cost the outputs
                log.warning("%s: vertebral-body figure not drawn (%s)", job.relpath, one_line(e))
        graded = [r for r in result.measures.rows if r.get("genant_grade") == r.get("genant_grade")]
        log.info("%s: %d vertebral bodies graded", job.relpath, len(graded))
        return StageOutput(outputs)
