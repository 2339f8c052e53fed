"""Stage 2, corrections: check an image's corrections before anything is touched, then redo
it from them instead of segmenting it (see `bids_app.corrections` and the correction loop in
the docs)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.bids.derivatives import image_output_paths
from bids_app.corrections.catalog import CorrectionCatalog
from bids_app.corrections.checking import Corrected, CorrectionError, check
from bids_app.corrections.finding import DISCS_KIND, KIND_NAMES, SEG_KIND
from bids_app.corrections.kept import KeptOutputs
from bids_app.engine.result import EngineError, EngineResult
from bids_app.plumbing.atomic import write_json_atomic
from bids_app.plumbing.errors import one_line, without_name
from bids_app.qc.records import QCPaths, read_json, refused_path
from bids_app.run.segmentation import ImageFailure, load_image
from bids_app.run.stages.base import Progress
from bids_app.run.stages.decide import ImagePlan
from bids_app.run.stages.segment import SegmentStage

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CorrectionStage:
    """Redoes corrected images: from the corrections of `catalog`, with the kept network
    outputs of `kept`, falling back on `segment` when nothing usable was kept."""

    def __init__(
        self,
        output_dir: Path,
        catalog: CorrectionCatalog,
        kept: KeptOutputs,
        segment: SegmentStage,
    ):
        self.output_dir, self.catalog, self.kept, self.segment = output_dir, catalog, kept, segment

    def read(self, plan: ImagePlan) -> Corrected | None:
        """The image and its checked corrections (None without any). CorrectionError names
        the file and its problem; an unreadable image is an ImageFailure."""
        found = self.catalog.of(plan.job)
        note = refused_path(self.output_dir, plan.job.name)
        if not found:
            note.unlink(missing_ok=True)
            return None
        try:
            fixes = check(found, load_image(plan.job.path), self.current_labels(plan))
        except CorrectionError as e:
            # The image's outputs and stamp stay as they were; the group's tables and work
            # list read this note, so the refusal does not vanish behind an "ok" stamp.
            write_json_atomic(note, {"reason": str(e), "refused": now_iso()})
            raise
        note.unlink(missing_ok=True)
        return fixes

    def current_labels(self, plan: ImagePlan) -> np.ndarray | None:
        """The image's final labels as its outputs hold them now (None without readable
        ones), against which disc points are checked."""
        job = plan.job
        path = (
            self.output_dir
            / image_output_paths(job.relpath, job.suffix, iso=False)[("final", False)]
        )
        try:
            return np.asanyarray(load_image(path).dataobj) if path.is_file() else None
        except ImageFailure:  # unreadable outputs: the points are checked by the labeling
            return None

    def redo(
        self, plan: ImagePlan, fixes: Corrected, progress: Progress
    ) -> tuple[nib.Nifti1Image, EngineResult]:
        """Redo an image from its corrections: a corrected segmentation as it is, disc points
        by relabeling the kept network outputs. The networks run only when nothing usable
        was kept; the automatic result's flags go to the stamp for provenance."""
        from bids_app.corrections import replay  # numpy/scipy only, but not needed before

        job = plan.job
        progress("corrections")
        plan.record["manual"] = KIND_NAMES[SEG_KIND if fixes.labels is not None else DISCS_KIND]
        plan.record["automatic_flags"] = self.automatic_flags(plan)
        kept = self.kept.load(job)
        device = str((plan.old_stamp or {}).get("device") or "cpu")
        try:
            if fixes.labels is not None:
                result = replay.from_manual(
                    fixes.image, fixes.labels, plan.options, kept=kept, name=job.name
                )
                return fixes.image, result
            if kept is not None:
                try:
                    result = replay.relabel(
                        fixes.image,
                        kept,
                        plan.options,
                        device=device,
                        loc=fixes.localizer,
                        name=job.name,
                        progress=progress,
                    )
                    return fixes.image, result
                except replay.KeptMismatch as e:
                    log.info("%s: %s; running the networks", job.name, e)
        except EngineError as e:
            raise ImageFailure(without_name(one_line(e), job.name)) from e
        if kept is None:  # after a KeptMismatch the line above said why
            log.info("%s: no kept network outputs; running the networks", job.name)
        return self.segment(plan, progress, loc=fixes.localizer)

    def automatic_flags(self, plan: ImagePlan) -> list | None:
        """The QC flags of the image's last automatic result (kept across corrections)."""
        old = plan.old_stamp or {}
        if old.get("corrections"):
            return old.get("automatic_flags")
        job = plan.job
        paths = QCPaths.of(self.output_dir, job.relpath, job.suffix)
        return read_json(paths.qc).get("flags") if paths.qc.is_file() else None
