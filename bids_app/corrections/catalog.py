"""The corrections of a run's selected images: found and matched once, then asked per image
(which are in use, what the stamp and the sidecars record of them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bids_app.bids.discovery import ImageJob
from bids_app.bids.stamps import source_stem
from bids_app.corrections.finding import (
    SEG_KIND,
    Correction,
    Matched,
    find_corrections,
    match,
    options_value,
    source_uri,
)

log = logging.getLogger(__name__)


class CorrectionCatalog:
    """The corrections under `root` (None: no corrections folder) for the images in `jobs`."""

    def __init__(self, root: Path | None, bids_dir: Path, jobs: Sequence[ImageJob]):
        self.root, self.bids_dir = root, bids_dir
        self.matched = self._find(jobs)

    def _find(self, jobs: Sequence[ImageJob]) -> Matched:
        """The selected images' corrections; a file that matches no image is one error line."""
        if self.root is None:
            return Matched({}, [])
        sources = [job.relpath for job in jobs]
        matched = match(find_corrections(self.root), self.root, self.bids_dir, sources)
        for line in matched.problems:
            log.error("%s", line)
        if matched.by_source:
            log.info("%d image(s) with corrections from %s", len(matched.by_source), self.root)
        return matched

    def of(self, job: ImageJob) -> dict[str, Correction]:
        """The image's corrections in use: a corrected segmentation makes disc points moot."""
        found = self.matched.by_source.get(
            str(PurePosixPath(job.relpath).parent / source_stem(job.name)), {}
        )
        return {SEG_KIND: found[SEG_KIND]} if SEG_KIND in found else dict(found)

    def options_value(self, job: ImageJob) -> str | None:
        """The `corrections` field of the image's options (the hash of its files)."""
        return options_value(self.of(job))

    def records(self, job: ImageJob) -> list[dict[str, str]]:
        """What the stamp keeps of the image's corrections (empty without any)."""
        if self.root is None:
            return []
        return [c.record(self.root) for c in self.of(job).values()]

    def sources(self, job: ImageJob) -> dict[str, str]:
        """Correction kind -> BIDS URI of its file, for the sidecars."""
        if self.root is None:
            return {}
        return {
            kind: source_uri(c.path, self.root, self.bids_dir) for kind, c in self.of(job).items()
        }
