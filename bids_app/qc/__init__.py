"""QC layer: previews, morphometry, flags, subject reports and the group summary.

Public API (called by the BIDS-App layer):
- `write_image_qc`: everything per image, right after its outputs are written;
- `write_subject_report`: `sub-<label>.html`;
- `run_group`: group tables and `group.html`, from participant-level files only;
- `rebuild_reports`: `--reports-only`, redoing the above from the written outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

from bids_app.bids.derivatives import image_output_paths
from bids_app.bids.stamps import Status
from bids_app.qc.geometry import load_nifti
from bids_app.qc.group import run_group
from bids_app.qc.image import write_image_qc
from bids_app.qc.records import collect, landmark_list, split_source
from bids_app.qc.report import write_subject_report

__all__ = ["rebuild_reports", "run_group", "write_image_qc", "write_subject_report"]

log = logging.getLogger(__name__)


def _load(path: Path | None) -> nib.Nifti1Image | None:
    """The image at `path`, or None when it is missing or unreadable (logged)."""
    if path is None or not path.is_file():
        return None
    try:
        return load_nifti(path)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        log.warning("%s: cannot read (%s)", path, e)
        return None


def rebuild_reports(
    output_dir: Path,
    bids_dir: Path | None,
    participants: Sequence[str] | None = None,
    sessions: Sequence[str] | None = None,
) -> list[Path]:
    """Redo every image's QC from its written outputs, then the subject reports.

    The final labels and level markers are read from output_dir (paths from the status
    stamp's `source`); the source image, needed only for the previews, from `bids_dir`. An
    image without a usable stamp, or whose files cannot be read (logged), keeps its old QC
    files. Returns the reports written.
    """
    root = Path(output_dir)
    participants = [p.removeprefix("sub-") for p in participants] if participants else None
    sessions = [s.removeprefix("ses-") for s in sessions] if sessions else None
    records = collect(root, participants, sessions)
    for rec in records:
        source = rec.stamp.get("source")
        if rec.stamp.get("status") not in (Status.OK, Status.PARTIAL) or not source:
            continue
        _, suffix = split_source(source)
        outputs = image_output_paths(source, suffix, iso=False)
        raw = _load(Path(bids_dir) / source) if bids_dir is not None else None
        if raw is None:
            log.warning("%s: source image not readable from the BIDS folder; previews kept", source)
        try:
            write_image_qc(
                raw,
                _load(root / outputs[("final", False)]),
                _load(root / outputs[("levels", False)]),
                output_dir=root,
                source=source,
                suffix=suffix,
                landmarks=landmark_list(rec.stamp.get("landmarks")),
            )
        except (OSError, ValueError, EOFError) as e:  # a corrupt file: keep going, say which
            log.error("%s: QC not rebuilt (%s)", source, str(e).splitlines()[0] if str(e) else e)
    subjects = sorted({r.subject for r in records} | set(participants or []))
    return [write_subject_report(root, s) for s in subjects]
