"""Run the BIDS validator (`bids-validator-deno`) on an input or output dataset.

The Deno validator is the maintained one (the PyPI `bids-validator` only checks names). It
exits 16 on errors; its JSON report gives the issues to show the user in a few lines rather
than a screenful.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

VALIDATOR = "bids-validator-deno"


class ValidatorUnavailable(Exception):
    """The validator is not installed or did not produce a report."""


@dataclass
class ValidationReport:
    returncode: int
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_lines(self, limit: int = 10) -> list[str]:
        """One line per error (code and file), at most `limit` plus a count of the rest."""
        lines = []
        for issue in self.errors[:limit]:
            lines.append(f"{_kind(issue)}: {issue.get('location') or ''}".rstrip(": "))
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more error(s)")
        return lines

    def warning_lines(self, examples: int = 3) -> list[str]:
        """One line per kind of warning (code and sub-code), most frequent first: the count
        and the first few files; a dataset's hundreds of warnings are usually a few kinds."""
        where: dict[str, list[str]] = {}
        for issue in self.warnings:
            where.setdefault(_kind(issue), []).append(issue.get("location") or "")
        lines = []
        for kind, locations in sorted(where.items(), key=lambda item: -len(item[1])):
            shown = [loc for loc in dict.fromkeys(locations) if loc][:examples]
            example = f", e.g. {', '.join(shown)}" if shown else ""
            lines.append(f"{kind}: {len(locations)}{example}")
        return lines


def _kind(issue: dict) -> str:
    """An issue's code with its sub-code ("SIDECAR_KEY_RECOMMENDED (Manufacturer)")."""
    sub = f" ({issue['subCode']})" if issue.get("subCode") else ""
    return f"{issue.get('code')}{sub}"


def find_validator() -> str | None:
    """The validator on PATH, or the one installed beside this Python (a venv not activated)."""
    found = shutil.which(VALIDATOR)
    if found:
        return found
    sibling = Path(sys.executable).parent / VALIDATOR
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def validate(dataset: Path, *, timeout: float | None = None) -> ValidationReport:
    """Validate `dataset` (raw or derivative, by its DatasetType); raises ValidatorUnavailable."""
    exe = find_validator()
    if exe is None:
        raise ValidatorUnavailable(f"{VALIDATOR} is not installed")
    try:
        proc = subprocess.run(
            [exe, "--format", "json", str(dataset)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValidatorUnavailable(f"{VALIDATOR} could not run ({e})") from e
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (ValueError, KeyError, TypeError) as e:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ValidatorUnavailable(
            f"{VALIDATOR} gave no report (exit {proc.returncode}: {tail[0]})"
        ) from e
    report = ValidationReport(proc.returncode)
    for issue in issues:
        severity = issue.get("severity")
        if severity == "error":
            report.errors.append(issue)
        elif severity == "warning":
            report.warnings.append(issue)
    return report


def subject_view(bids_dir: Path, participants: Sequence[str], dest: Path) -> Path:
    """A folder of symlinks showing only the top-level files and the given subjects.

    Validating it checks the selected subjects only, so a broken subject elsewhere in a large
    dataset does not stop a per-subject cluster job.
    """
    bids_dir, dest = Path(bids_dir).resolve(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    keep = {f"sub-{p}" for p in participants}
    for entry in bids_dir.iterdir():
        if entry.name.startswith("sub-") and entry.name not in keep:
            continue
        if entry.name in {"derivatives", "sourcedata", "code"}:
            continue
        link = dest / entry.name
        if not link.exists():
            link.symlink_to(entry, target_is_directory=entry.is_dir())
    return dest
