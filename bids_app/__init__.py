"""SpineSeg: whole-spine MRI segmentation (TotalSpineSeg method) as a BIDS App."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def _read_version() -> str:
    # The top-level `version` file is the single source of truth (BIDS-App convention); an
    # installed wheel knows it from its metadata (pyproject reads the same file).
    for candidate in (Path(__file__).with_name("VERSION"), Path(__file__).parents[1] / "version"):
        if candidate.is_file():
            return candidate.read_text().strip()
    try:
        return metadata.version("spineseg")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _read_version()
