"""Stage 4, write: the image's label files and their sidecars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bids_app.bids.derivatives import ModelInfo, write_image_outputs
from bids_app.bids.discovery import ImageJob
from bids_app.run.stages.base import Segmented, StageOutput, writing


class WriteStage:
    """Writes every image's outputs with the run's model provenance; `manual` gives the BIDS
    URIs of an image's corrections (kind -> URI) for the sidecars."""

    name = "write"
    # Reads every result, the largest arrays, and zlib frees the GIL: not worth a worker.
    worker_reads: tuple[str, ...] | None = None

    def __init__(
        self, output_dir: Path, model: ModelInfo, manual: Callable[[ImageJob], dict[str, str]]
    ):
        self.output_dir, self.model, self.manual = output_dir, model, manual

    def applies(self, job: ImageJob) -> bool:
        return True

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """The image outputs and their sidecars (a disk error stops the run: exit 74)."""
        job = image.job
        with writing(job.name):
            return StageOutput(
                write_image_outputs(
                    self.output_dir,
                    job.relpath,
                    job.suffix,
                    image.result,
                    self.model,
                    localizer_output=image.options.localizer,
                    manual=self.manual(job),
                )
            )
