"""Stage 1, decide: the image's options (with its localizer and corrections) and whether its
stamp lets the run skip it. Reads stamps only: nothing is loaded or written."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bids_app import __version__
from bids_app.bids.derivatives import image_output_paths
from bids_app.bids.discovery import ImageJob
from bids_app.bids.stamps import (
    Decision,
    Status,
    options_hash,
    read_stamp,
    resume_decision,
    stamp_path,
)
from bids_app.corrections.catalog import CorrectionCatalog
from bids_app.engine.options import SegmentOptions


@dataclass
class ImagePlan:
    """What the run decided for one image before touching it."""

    job: ImageJob
    options: SegmentOptions
    decision: Decision
    old_stamp: dict | None
    record: dict  # the stamp fields known before segmenting
    localizer_warning: str | None
    started: float


def localizer_labels(output_dir: Path, localizer: ImageJob | None) -> tuple[str | None, str | None]:
    """(output-relative path of the localizer's labels, warning) for a guided image."""
    if localizer is None:
        return None, None
    stamp = read_stamp(stamp_path(output_dir, localizer.name)) or {}
    outputs = image_output_paths(localizer.relpath, localizer.suffix, iso=False)
    listed = set(stamp.get("outputs") or [])
    for key in ("final", "step1"):
        rel = outputs[(key, False)]
        if (
            stamp.get("status") in (Status.OK, Status.PARTIAL)
            and rel in listed
            and (output_dir / rel).is_file()
        ):
            return rel, None
    why = stamp.get("reason") or stamp.get("status") or "not segmented"
    return None, f"localizer {localizer.name} has no labels ({why}); segmented without it"


def decide(
    job: ImageJob,
    *,
    output_dir: Path,
    options: SegmentOptions,
    jobs: Mapping[Path, ImageJob],
    corrections: CorrectionCatalog,
    model: dict | None,
    overwrite: bool,
    retry_failed: bool,
) -> ImagePlan:
    """The image's plan; `jobs` are the selected images by path (its localizer among them).
    `model` is the stamp's model record (lesion model included where it runs); None (a dry
    run) means the decision does not compare model hashes."""
    started = time.monotonic()
    localizer = jobs[job.localizer] if job.localizer else None
    loc_rel, loc_warning = localizer_labels(output_dir, localizer)
    options = replace(options, localizer=loc_rel, corrections=corrections.options_value(job))
    opts_hash = options_hash(options.record())
    old = read_stamp(stamp_path(output_dir, job.name))
    decision = resume_decision(
        old,
        output_dir=output_dir,
        app_version=__version__,
        opts_hash=opts_hash,
        model=model,
        overwrite=overwrite,
        retry_failed=retry_failed,
        source=job.path,
    )
    record: dict[str, object] = {
        "source": job.relpath,
        "subject": job.subject,
        "session": job.session,
        "app_version": __version__,
        "options_hash": opts_hash,
        "options": options.record(),
        "model": model,
    }
    if records := corrections.records(job):
        record["corrections"] = records
    return ImagePlan(job, options, decision, old, record, loc_warning, started)


def unplanned(job: ImageJob, options: SegmentOptions) -> ImagePlan:
    """The plan of an image whose `decide` broke: stamped without an options hash, so the
    next run tries the image again."""
    record: dict[str, object] = {"source": job.relpath, "subject": job.subject}
    record |= {"session": job.session, "app_version": __version__}
    record["options"] = options.record()
    return ImagePlan(job, options, Decision(True, ""), None, record, None, time.monotonic())
