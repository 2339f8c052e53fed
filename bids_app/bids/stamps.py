"""Per-image status stamps: the record that makes resuming safe.

The stamp `logs/status/<source name>.json` is written last and atomically, so its presence
with status "ok" proves that every output it lists was complete. A rerun skips an image only
when the stamp also matches the app version, the output-affecting options and the model
hashes; anything else is recomputed, because a half-finished or differently-made result must
not pass for a current one (the bids-apps/freesurfer lesson).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

from bids_app.atomic import write_json_atomic

STATUS_DIR = Path("logs") / "status"


class Status(StrEnum):
    """An image's outcome: in stamps, status tables, reports and group tables."""

    OK = "ok"  # every output written
    PARTIAL = "partial"  # step-1 outputs (cord, canal) written, final labels missing
    FAILED = "failed"  # nothing usable written; the reason says why
    SKIPPED = "skipped"  # done by an earlier run with the same version, options and model


def source_stem(name: str) -> str:
    """File name without `.nii.gz` / `.nii` (the stamp and output naming key)."""
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def stamp_path(output_dir: Path, source_name: str) -> Path:
    return Path(output_dir) / STATUS_DIR / f"{source_stem(Path(source_name).name)}.json"


def options_hash(options: Mapping[str, object]) -> str:
    """Order-independent hash of the options that change what is written for an image."""
    blob = json.dumps(dict(options), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_stamp(path: Path) -> dict | None:
    """The stamp, or None when missing or unreadable (then the image is simply recomputed)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(path: Path, record: Mapping[str, object]) -> dict:
    """Write the stamp (adds `finished`); call only after every listed output exists."""
    data = dict(record)
    data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path, data)
    return data


@dataclass(frozen=True)
class Decision:
    """Whether to (re)compute an image, why, and whether the user should be warned."""

    run: bool
    reason: str
    warn: bool = False


def resume_decision(
    stamp: Mapping | None,
    *,
    output_dir: Path,
    app_version: str,
    opts_hash: str,
    model: Mapping[str, object],
    overwrite: bool = False,
) -> Decision:
    """Decide what to do with one image given its previous stamp (see module docstring)."""
    if overwrite:
        return Decision(True, "--overwrite given")
    if stamp is None:
        return Decision(True, "no previous result")
    status = stamp.get("status")
    if status != Status.OK:
        why = stamp.get("reason") or "no reason recorded"
        return Decision(True, f"previous run ended '{status}' ({why})")
    if stamp.get("app_version") != app_version:
        old = stamp.get("app_version")
        return Decision(True, f"previous result made by spineseg {old}, now {app_version}", True)
    if stamp.get("options_hash") != opts_hash:
        return Decision(True, "previous result made with other options", True)
    old_model = stamp.get("model") or {}
    if old_model.get("release") != model.get("release"):
        old, new = old_model.get("release"), model.get("release")
        return Decision(True, f"previous result made with model release {old}, now {new}", True)
    if old_model.get("sha256") != model.get("sha256"):
        return Decision(True, "previous result made with different model weights (hashes)", True)
    missing = [o for o in stamp.get("outputs") or [] if not (Path(output_dir) / o).is_file()]
    if missing:
        return Decision(True, f"{len(missing)} previous output(s) missing, e.g. {missing[0]}", True)
    return Decision(False, "already done with the same version, options and model")
