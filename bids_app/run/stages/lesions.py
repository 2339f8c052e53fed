"""Stage 5, lesions: on the images the lesion model applies to, run it after the spine
result on the spine networks' device pool, measure and write (see `bids_app.lesions`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from bids_app import __version__
from bids_app.bids.derivatives import LOGS_DIR, bids_prefix, final_output_relpath
from bids_app.bids.discovery import ImageJob
from bids_app.bids.sources import file_sha256
from bids_app.bids.stamps import source_stem
from bids_app.corrections.kept import KEPT_DIR, load_kept, save_kept
from bids_app.lesions.outputs import model_record, write_lesion_outputs
from bids_app.lesions.preview import figure_path, write_preview
from bids_app.lesions.run import LesionRunner, spine_for_lesions
from bids_app.nnunet.weights import WeightsError
from bids_app.plumbing.crash import write_crash_file
from bids_app.plumbing.errors import ExitCode, UserError, one_line
from bids_app.run.scheduling import MemoryGate
from bids_app.run.stages.base import Segmented, StageOutput, writing

log = logging.getLogger(__name__)


class LesionStage:
    """Lesions of each image `runner` applies to, inside the run's memory gate; `engine`
    gives the run's engine when it exists (its device pool serves the lesion model too)."""

    name = "lesions"
    worker_reads: tuple[str, ...] | None = None  # its network runs on the run's device pool

    def __init__(
        self,
        runner: LesionRunner,
        output_dir: Path,
        memory: MemoryGate,
        engine: Callable[[], object | None],
    ):
        self.runner, self.output_dir, self.memory, self.engine = runner, output_dir, memory, engine

    def applies(self, job: ImageJob) -> bool:
        return self.runner.applies(job.suffix)

    def kept_meta(self, job: ImageJob) -> dict[str, object]:
        """What a kept lesion output was made from: a change to any makes it unusable."""
        digest = file_sha256(job.path)
        model = model_record(self.runner.weights)
        return {"source_sha256": digest, "app_version": __version__, "lesion_model": model}

    def run(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """Lesion outputs of one image, or the reason they are missing (a disk error while
        writing them stops the run: exit 74)."""
        with writing(image.job.name):
            return self._lesions(image, written)

    def _lesions(self, image: Segmented, written: Sequence[str]) -> StageOutput:
        """Lesion outputs of one image, or the reason they are missing.

        Uses the final labels, else the step-1 labels, for the crop, the cord and the levels.
        A lesion failure costs only the lesion outputs (the image becomes partial); a model
        that cannot be loaded stops the run (exit 78), as spine weights do. The stage waits
        in the run's memory gate, like the spine networks, until its arrays fit.
        """
        job, img, result = image.job, image.image, image.result
        out, relpath, suffix, runner = self.output_dir, job.relpath, job.suffix, self.runner
        final_out = final_output_relpath(relpath, suffix)
        spine_output = final_out if final_out in written else None
        _, spine, warnings = spine_for_lesions(result.native)
        pool = getattr(getattr(self.engine(), "networks", None), "pool", None)
        need = runner.memory_bytes(img)
        if not self.memory.fits(need):
            return StageOutput(
                [],
                f"lesions: need about {need / 2**30:.1f} GiB on the 1 mm grid, more than the "
                f"{self.memory.capacity / 2**30:.1f} GiB the memory budget leaves for images "
                "(raise --mem-mb)",
            )
        kept_path = out / KEPT_DIR / f"{source_stem(job.name)}_lesion.npz"
        meta = self.kept_meta(job)
        kept = load_kept(kept_path, meta, frozenset({"lesion", "box", "device"}))
        try:
            with self.memory.reserve(need):
                lesions = runner.segment(
                    img, spine, pool.run if pool is not None else None, kept=kept
                )
        except WeightsError as e:
            raise UserError(ExitCode.CONFIG, str(e)) from e
        except Exception as e:  # the spine outputs stay; the image becomes partial
            crash = write_crash_file(
                out / LOGS_DIR, f"{source_stem(job.name)}-lesions", e, {"image": relpath}
            )
            where = crash.relative_to(out).as_posix()
            return StageOutput([], f"lesions: {one_line(e, with_type=True)} (see {where})")
        if lesions.network:  # kept like the spine networks' outputs, for a correction
            try:
                save_kept(kept_path, lesions.network, meta)
            except OSError as e:  # only a later correction loses: it runs the network
                log.warning("%s: lesion network output not kept (%s)", relpath, e)
        else:
            log.info("%s: lesion network output kept from the earlier run; not rerun", relpath)
        result.timings["lesion_device"] = round(lesions.seconds, 3)
        written_now = write_lesion_outputs(
            out,
            relpath,
            suffix,
            lesions,
            runner.weights,
            sources=[f"bids:raw:{relpath}"] + ([f"bids::{spine_output}"] if spine_output else []),
            warnings=warnings,
        )
        figure = figure_path(out, job.subject, bids_prefix(Path(relpath).name, suffix), suffix)
        try:
            write_preview(figure, img, spine, lesions.mask)
            written_now.append(figure.relative_to(out).as_posix())
        except (ValueError, OSError) as e:  # a missing picture must not cost the outputs
            log.warning("%s: lesion preview not drawn (%s)", relpath, one_line(e))
        log.info("%s: %d lesion(s)", relpath, len(lesions.report.rows))
        return StageOutput(written_now)
