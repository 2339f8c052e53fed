"""Per-image status stamps: the record that makes resuming safe.

The stamp `logs/status/<source name>.json` is written last and atomically, so its presence
with status "ok" proves that every output it lists was complete. A rerun skips an image only
when the stamp also matches the app version, the output-affecting options and the model
hashes; anything else is recomputed, because a half-finished or differently-made result must
not pass for a current one (the bids-apps/freesurfer lesson).

A "failed" or "partial" stamp made the same way is skipped too: the same inputs would fail
the same way (no landmark, a bad header), and a rerun of a finished dataset must cost
seconds. The skip still reports the failure, and `--retry-failed` recomputes it. What died
without a stamp (killed, out of memory at the system level) and failures stamped `transient`
(out of memory inside the process) are always retried.

The stamp also records what the source file was (`source_file`, see `bids.sources`): a
source replaced since (re-converted DICOMs) is recomputed, and so is an image that failed
because its content was missing (a dangling git-annex link) once the content is there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from bids_app.bids.sources import source_change
from bids_app.plumbing.atomic import write_json_atomic

STATUS_DIR = Path("logs") / "status"


class Status(StrEnum):
    """An image's outcome: in stamps, status tables, reports and group tables."""

    OK = "ok"  # every output written
    PARTIAL = "partial"  # step-1 outputs (cord, canal) written, final labels missing
    FAILED = "failed"  # nothing usable written; the reason says why
    SKIPPED = "skipped"  # done by an earlier run with the same version, options and model


# What the group level says of an image that has no usable stamp: QC files without one (the
# run was interrupted), or a selected participant with no record at all.
INCOMPLETE, MISSING = "incomplete", "missing"


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
    data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(path, data)
    return data


@dataclass(frozen=True)
class Decision:
    """Whether to (re)compute an image, why, and whether the user should be warned.

    `status` is what a skip reports: "skipped" for a result that is done, the previous
    outcome for a failure that is not retried (so the run still counts it as failed).
    """

    run: bool
    reason: str
    warn: bool = False
    status: Status = Status.SKIPPED


def resume_decision(
    stamp: Mapping | None,
    *,
    output_dir: Path,
    app_version: str,
    opts_hash: str,
    model: Mapping[str, object] | None,
    overwrite: bool = False,
    retry_failed: bool = False,
    source: Path | None = None,
) -> Decision:
    """Decide what to do with one image given its previous stamp (see module docstring).

    `model` None means the model is unknown (a dry run reads no weights): it is then not
    compared, and a skip names only the version and options as checked. `source` is the
    source image, compared with what the stamp recorded of it (None: not compared).
    """
    if overwrite:
        return Decision(True, "--overwrite given")
    if stamp is None:
        return Decision(True, "no previous result")
    status = stamp.get("status")
    why = stamp.get("reason") or "no reason recorded"
    failed = status in (Status.FAILED, Status.PARTIAL)
    if status != Status.OK and not failed:
        return Decision(True, f"previous run ended '{status}' ({why})")
    if stamp.get("transient"):
        return Decision(True, f"previous run ended '{status}' ({why}); retrying")
    changed = _what_changed(stamp, output_dir, app_version, opts_hash, model, source)
    if changed:  # a warning only when a good result gets replaced
        return Decision(True, changed, warn=not failed)
    if failed and retry_failed:
        return Decision(True, f"previous run ended '{status}' ({why}); --retry-failed given")
    same = (
        "the same version and options" if model is None else ("the same version, options and model")
    )
    if not failed:
        return Decision(False, f"already done with {same}")
    verb = "failed" if status == Status.FAILED else "ended partial"
    return Decision(
        False,
        f"{verb} before with {same}: {why}; --retry-failed to try again",
        status=Status(str(status)),
    )


def _what_changed(
    stamp: Mapping,
    output_dir: Path,
    app_version: str,
    opts_hash: str,
    model: Mapping[str, object] | None,
    source: Path | None,
) -> str | None:
    """Why the stamped result is not what this run would make (None: it is)."""
    if stamp.get("app_version") != app_version:
        return f"previous result made by spineseg {stamp.get('app_version')}, now {app_version}"
    if stamp.get("options_hash") != opts_hash:
        return "previous result made with other options"
    if model is not None:
        old_model = stamp.get("model") or {}
        if old_model.get("release") != model.get("release"):
            old, new = old_model.get("release"), model.get("release")
            return f"previous result made with model release {old}, now {new}"
        if old_model.get("sha256") != model.get("sha256"):
            return "previous result made with different model weights (hashes)"
    if source is not None and (why := source_change(stamp.get("source_file"), source)):
        return why
    missing = missing_outputs(output_dir, stamp)
    if missing:
        return f"{len(missing)} previous output(s) missing, e.g. {missing[0]}"
    return None


def missing_outputs(output_dir: Path, stamp: Mapping) -> list[str]:
    """The outputs a stamp lists that are no longer in `output_dir` (deleted by hand)."""
    return [o for o in stamp.get("outputs") or [] if not (Path(output_dir) / o).is_file()]
