"""The lesion step inside a participant run: resolve the model once, then per image run it
after the spine result on the spine networks' device pool, measure and write.

`bids_app.run.participant` calls `resolve_lesion_runner` once and `lesion_step` per image; the
rest of the participant run does not know about lesions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

from bids_app.bids.derivatives import LOGS_DIR, bids_prefix, final_output_relpath
from bids_app.bids.discovery import ImageJob
from bids_app.bids.stamps import source_stem
from bids_app.engine.result import EngineResult
from bids_app.lesions.outputs import model_record, write_lesion_outputs
from bids_app.lesions.preview import figure_path, write_preview
from bids_app.lesions.run import LesionRunner, spine_for_lesions
from bids_app.lesions.weights import resolve_lesion_model
from bids_app.nnunet.weights import WeightsError
from bids_app.plumbing.crash import write_crash_file
from bids_app.plumbing.errors import ExitCode, UserError, one_line
from bids_app.run.scheduling import MemoryGate

log = logging.getLogger(__name__)


def resolve_lesion_runner(
    model: str | None, suffixes: tuple[str, ...], threads: int | None
) -> LesionRunner | None:
    """The run's lesion runner (None without --lesion-model); a bad model exits 78."""
    if model is None:
        return None
    try:
        weights = resolve_lesion_model(model)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    log.info(
        "lesion model %s (%d fold(s)) on %s images",
        weights.folder,
        len(weights.checkpoints),
        ", ".join(suffixes),
    )
    return LesionRunner(weights, suffixes, threads=threads)


def with_lesion_model(model: dict | None, runner: LesionRunner | None, suffix: str) -> dict | None:
    """The stamp's model record, plus the lesion model for the images it runs on: its hashes
    join the spine weights' so that a new or changed lesion model recomputes the image."""
    if model is None or runner is None or not runner.applies(suffix):
        return model
    record = model_record(runner.weights)
    lesion_hashes = {f"lesion:{k}": v for k, v in record["SHA256"].items()}
    return {**model, "sha256": {**model["sha256"], **lesion_hashes}, "lesion": record}


def lesion_step(
    runner: LesionRunner | None,
    engine: object,
    output_dir: Path,
    job: ImageJob,
    img: nib.Nifti1Image,
    result: EngineResult,
    spine_outputs: Sequence[str],
    memory: MemoryGate,
) -> tuple[list[str], str | None]:
    """Lesions of one image: (written output-relative paths, failure reason or None).

    Uses the final labels, else the step-1 labels, for the crop, the cord and the levels.
    A lesion failure costs only the lesion outputs (the caller marks the image partial);
    a model that cannot be loaded stops the run (exit 78), as spine weights do. The step
    waits in the run's memory gate, like the spine networks, until its arrays fit.
    """
    relpath, suffix = job.relpath, job.suffix
    if runner is None or not runner.applies(suffix):
        return [], None
    final_out = final_output_relpath(relpath, suffix)
    spine_output = final_out if final_out in spine_outputs else None
    _, spine, warnings = spine_for_lesions(result.native)
    pool = getattr(getattr(engine, "networks", None), "pool", None)
    need = runner.memory_bytes(img)
    if not memory.fits(need):
        return [], (
            f"lesions: need about {need / 2**30:.1f} GiB on the 1 mm grid, more than the "
            f"{memory.capacity / 2**30:.1f} GiB the memory budget leaves for images "
            "(raise --mem-mb)"
        )
    try:
        with memory.reserve(need):
            lesions = runner.segment(img, spine, pool.run if pool is not None else None)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except Exception as e:  # the spine outputs stay; the image becomes partial
        crash = write_crash_file(
            output_dir / LOGS_DIR, f"{source_stem(job.name)}-lesions", e, {"image": relpath}
        )
        where = crash.relative_to(output_dir).as_posix()
        return [], f"lesions: {one_line(e, with_type=True)} (see {where})"
    result.timings["lesion_device"] = round(lesions.seconds, 3)
    written = write_lesion_outputs(
        output_dir,
        relpath,
        suffix,
        lesions,
        runner.weights,
        sources=[f"bids:raw:{relpath}"] + ([f"bids::{spine_output}"] if spine_output else []),
        warnings=warnings,
    )
    figure = figure_path(output_dir, job.subject, bids_prefix(Path(relpath).name, suffix), suffix)
    try:
        write_preview(figure, img, spine, lesions.mask)
        written.append(figure.relative_to(output_dir).as_posix())
    except (ValueError, OSError) as e:  # a missing picture must not cost the outputs
        log.warning("%s: lesion preview not drawn (%s)", relpath, one_line(e))
    log.info("%s: %d lesion(s)", relpath, len(lesions.report.rows))
    return written, None
