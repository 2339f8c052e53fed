"""Calls into `bids_app.qc` (previews, measurements, reports), isolated in one place.

QC must never cost a segmentation: a failure is reported (the image becomes "partial") but
the outputs stay. When the QC package is not installed, the BIDS outputs are still complete.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _qc():
    if importlib.util.find_spec("bids_app.qc") is None:
        return None
    return importlib.import_module("bids_app.qc")


def image_qc(output_dir: Path, job, outputs: Sequence[str], result) -> tuple[list[str], str | None]:
    """QC of one image: (files written, relative to output_dir; error line or None).

    `result` is the EngineResult when the image was just segmented, None for --reports-only
    (QC then reads the written outputs).
    """
    qc = _qc()
    if qc is None:
        return [], None
    try:
        written = qc.write_image_qc(
            output_dir,
            source=job.path,
            relpath=job.relpath,
            suffix=job.suffix,
            outputs=list(outputs),
            result=result,
        )
    except Exception as e:  # QC is secondary: keep the segmentation, report the problem
        log.exception("%s: QC failed", job.name)
        return [], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return [Path(p).as_posix() for p in written or []], None


def subject_report(output_dir: Path, subject: str) -> None:
    qc = _qc()
    if qc is None:
        return
    try:
        qc.write_subject_report(output_dir, subject)
    except Exception:
        log.exception("sub-%s: subject report failed", subject)


def group(
    output_dir: Path, participants: list[str] | None, sessions: list[str] | None
) -> list[str]:
    """Group summary; returns the files written. Requires the QC package."""
    qc = _qc()
    if qc is None:
        log.warning("bids_app.qc is not installed: no group summary")
        return []
    written = qc.run_group(output_dir, participants, sessions)
    return [str(p) for p in written or []]
