"""Stage 7, stamp (always last): remove what the previous run wrote and this one did not, then
record the image's outcome; and what a failed image records (its crash file, whether the next
run retries it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from bids_app.bids.derivatives import LOGS_DIR
from bids_app.bids.stamps import Status, source_stem, stamp_path, write_stamp
from bids_app.engine.result import EngineResult
from bids_app.plumbing.crash import write_crash_file
from bids_app.plumbing.errors import without_name
from bids_app.run.segmentation import ImageCrash, ImageOutOfMemory
from bids_app.run.stages.base import writing
from bids_app.run.stages.decide import ImagePlan


def failure_reason(output_dir: Path, plan: ImagePlan, error: BaseException) -> str:
    """The one-line reason of a failed image; `error` decides the rest: an unexpected one
    gets a crash file, named by the reason; out of memory is recorded `transient`, so the
    next run retries it."""
    job = plan.job
    reason = without_name(str(error), job.name)
    plan.record["transient"] = isinstance(error, ImageOutOfMemory)  # stamp fields
    if isinstance(error, ImageCrash):
        with writing(job.name):
            crash = write_crash_file(
                output_dir / LOGS_DIR,
                source_stem(job.name),
                error.__cause__ or error,
                {"image": job.relpath, "options": plan.record["options"]},
            )
        plan.record["crash_file"] = crash.relative_to(output_dir).as_posix()
        reason = f"{reason} (see {plan.record['crash_file']})"
    return reason


def stamp(
    output_dir: Path,
    plan: ImagePlan,
    status: Status,
    reason: str | None,
    result: EngineResult | None,
    outputs: Sequence[str] = (),
) -> None:
    """Stamp the image (a failed one has no `result`); a finished one first loses the
    outputs of its previous run that this one did not rewrite."""
    job = plan.job
    if result is not None:
        with writing(job.name):
            remove_stale(output_dir, plan.old_stamp, outputs)
    total = round(time.monotonic() - plan.started, 3)
    with writing(job.name):
        write_stamp(
            stamp_path(output_dir, job.name),
            {
                **plan.record,
                "status": status,
                "reason": reason,
                "device": result.device if result else None,
                "timings": {**(result.timings if result else {}), "total": total},
                "landmarks": result.landmarks if result else {},
                "warnings": [*result.warnings, *result.errors] if result else [],
                "outputs": list(outputs),
            },
        )


def remove_stale(output_dir: Path, old: dict | None, outputs: Sequence[str]) -> None:
    """Delete outputs of the previous run of this image that this run did not rewrite."""
    keep = set(outputs)
    root = output_dir.resolve()
    for rel in (old or {}).get("outputs") or []:
        path = (output_dir / rel).resolve()
        if rel not in keep and root in path.parents:
            path.unlink(missing_ok=True)
