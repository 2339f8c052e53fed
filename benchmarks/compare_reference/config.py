"""Facts every part of the comparison shares: paths, tool names, output names, the run setup."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


DATA = Path(os.environ.get("SPINESEG_SHARED_DATA", "/work/shared/data"))


DEMO_WEIGHTS = REPO / "bids_app" / "demo_models"


REFERENCE = "totalspineseg==20260807"


TOOLS = ("ref", "ref-preload", "spineseg")


# Output names per tool and kind. Reference: <out>/<folder>/<name>.nii.gz (docs/method.md §6.2);
# SpineSeg segment CLI: <out>/<name>_<suffix>.nii.gz.
REF_OUTPUTS = {
    "final": "step2_output",
    "step1": "step1_output",
    "levels": "step1_levels",
    "cord_soft": "step1_cord",
    "canal_soft": "step1_canal",
}


OUR_OUTPUTS = {
    "final": "seg-spine_dseg",
    "step1": "seg-step1_dseg",
    "levels": "seg-discmarkers_dseg",
    "cord_soft": "label-cord_probseg",
    "canal_soft": "label-canal_probseg",
}


LABEL_KINDS = ("final", "step1")


@dataclass
class Setup:
    refenv: Path
    weights: Path
    data_dir: Path  # reference --data-dir (nnUNet/results/Dataset10x_* links)
    device: str
    threads: int
    timeout: float
    step1_only: bool
    preload: tuple[str, ...]
    work: Path
    spineseg_cmd: list[str]
