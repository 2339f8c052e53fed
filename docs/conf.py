"""Sphinx configuration of the SpineSeg documentation (`make docs`).

Markdown pages through myst-parser; the Usage page renders the real argparse parsers with
sphinx-argparse, so the option reference cannot drift from the code. No intersphinx: the
build is offline and runs with warnings as errors (-W) in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs" / "_ext"))

project = "SpineSeg"
author = "SpineSeg developers"
release = (REPO / "version").read_text().strip()
version = release
copyright = "2026, SpineSeg developers"

# spineseg_columns (docs/_ext): output table columns rendered from the code's sidecars.
extensions = ["myst_parser", "sphinxarg.ext", "spineseg_columns"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# Slug anchors for headings, so Markdown links such as `outputs.md#labels` resolve.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
exclude_patterns = ["_build", "_ext"]
# Options keep their two hyphens and straight quotes ("--loc", not an en dash).
smartquotes = False
html_theme = "alabaster"
html_theme_options = {"description": "Whole-spine MRI segmentation as a BIDS App"}
html_static_path: list[str] = []
