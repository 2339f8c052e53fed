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

import nibabel as nib

from bids_app.bids.derivatives import bids_prefix

log = logging.getLogger(__name__)


def _qc(function: str):
    """The QC function, or None while the QC package (or that function) is not installed."""
    if importlib.util.find_spec("bids_app.qc") is None:
        return None
    return getattr(importlib.import_module("bids_app.qc"), function, None)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def image_qc(output_dir: Path, job, result) -> tuple[list[str], str | None]:
    """QC of one just-segmented image: (files written, relative to output_dir; error or None).

    The source image is read again (lazily, read-only) for the previews; labels and markers
    come from the EngineResult, on the source grid.
    """
    write_image_qc = _qc("write_image_qc")
    if write_image_qc is None:
        return [], None
    from bids_app.qc.records import landmark_list

    try:
        summary = write_image_qc(
            nib.load(str(job.path)),
            result.native.get("final"),
            result.native.get("levels"),
            output_dir=Path(output_dir),
            subject=job.subject,
            stem=bids_prefix(job.name, job.suffix),
            suffix=job.suffix,
            landmarks=landmark_list(result.landmarks),
        )
    except Exception as e:  # QC is secondary: keep the segmentation, report the problem
        log.exception("%s: QC failed", job.name)
        return [], _one_line(e)
    return [Path(p).as_posix() for p in summary.get("outputs", [])], None


def subject_report(output_dir: Path, subject: str) -> None:
    """`sub-<label>.html` from the stamps and QC files (call after the subject's stamps)."""
    write_subject_report = _qc("write_subject_report")
    if write_subject_report is None:
        return
    try:
        write_subject_report(Path(output_dir), subject)
    except Exception:
        log.exception("sub-%s: subject report failed", subject)


def rebuild(
    output_dir: Path,
    bids_dir: Path,
    participants: Sequence[str] | None,
    sessions: Sequence[str] | None,
) -> list[str]:
    """--reports-only: redo every image's QC and the subject reports from written outputs."""
    rebuild_reports = _qc("rebuild_reports")
    if rebuild_reports is None:
        log.warning("bids_app.qc is not installed: no reports to rebuild")
        return []
    return [str(p) for p in rebuild_reports(output_dir, bids_dir, participants, sessions)]


def group(
    output_dir: Path, participants: Sequence[str] | None, sessions: Sequence[str] | None
) -> list[str]:
    """Group tables and `group.html`; returns what was written."""
    run_group = _qc("run_group")
    if run_group is None:
        log.warning("bids_app.qc is not installed: no group summary")
        return []
    page = run_group(Path(output_dir), participants, sessions)
    return [str(page)] if page else []
