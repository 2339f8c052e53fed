"""The raw network outputs of each image, kept between runs so that a correction can relabel
them instead of running the networks again.

They live in `<output_dir>/logs/cache/<image>.npz` (a few MB per image, compressed) with what
they were made from (the source file's hash, the app version, the model): a change to any of
them makes the file unusable, and the networks run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bids_app import __version__
from bids_app.bids.derivatives import LOGS_DIR
from bids_app.bids.discovery import ImageJob
from bids_app.bids.sources import file_sha256
from bids_app.bids.stamps import source_stem
from bids_app.plumbing.atomic import atomic_path

log = logging.getLogger(__name__)

KEPT_DIR = LOGS_DIR / "cache"  # raw network outputs per image, for corrections


def save_kept(path: Path, kept: Mapping[str, np.ndarray], meta: Mapping[str, object]) -> int:
    """Write the kept outputs (compressed) with `meta` (what they were made from); returns
    the file's size in bytes."""
    arrays = {k: np.asarray(v) for k, v in kept.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as f:
        meta_text = np.array(json.dumps(dict(meta), sort_keys=True))
        np.savez_compressed(f, meta=meta_text, **arrays)  # type: ignore[arg-type]
    return path.stat().st_size


def load_kept(
    path: Path,
    meta: Mapping[str, object],
    required: frozenset[str] = frozenset({"step1", "canal_soft", "cord_soft"}),
) -> dict[str, np.ndarray] | None:
    """The kept outputs, or None when missing, unreadable, made from something else or
    without the `required` arrays."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["meta"])) != json.loads(json.dumps(dict(meta))):
                return None
            kept = {k: data[k] for k in data.files if k != "meta"}
    except (OSError, ValueError, KeyError):
        return None
    return kept if required <= set(kept) else None


class KeptOutputs:
    """The kept network outputs of a run's images, for one output folder and model (`model`
    is the stamp's model record, None in a dry run)."""

    def __init__(self, output_dir: Path, model: Mapping[str, object] | None):
        self.output_dir, self.model = output_dir, model

    def path(self, job: ImageJob) -> Path:
        return self.output_dir / KEPT_DIR / f"{source_stem(job.name)}.npz"

    def meta(self, job: ImageJob) -> dict[str, object]:
        """What kept network outputs were made from: a change makes them unusable."""
        digest = file_sha256(job.path)
        return {"source_sha256": digest, "app_version": __version__, "model": self.model}

    def load(self, job: ImageJob) -> dict[str, np.ndarray] | None:
        """The image's kept outputs, None when there are none it can use."""
        return load_kept(self.path(job), self.meta(job))

    def keep(self, job: ImageJob, kept: Mapping[str, np.ndarray]) -> None:
        """Keep what the networks gave (nothing when they did not run)."""
        if not kept:
            return
        try:
            size = save_kept(self.path(job), kept, self.meta(job))
        except OSError as e:  # only a later correction loses: it will run the networks
            log.warning("%s: network outputs not kept (%s)", job.name, e.strerror or e)
            return
        log.debug("%s: kept network outputs, %.1f MB", job.name, size / 1e6)
