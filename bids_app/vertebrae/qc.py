"""Vertebral-body columns and flags of the group QC table, read from each image's table.

Two flags make the QC status `check`: `possible_fracture` (a body graded Genant 1 or more:
it lost 20 % or more of a height) and `listhesis` (a slip graded Meyerding I or more, i.e.
10 % or more of the lower endplate's depth). Both are pointers for the reviewer, image
measures for research, not diagnoses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from bids_app.qc.records import read_tsv

COLUMNS: dict[str, str] = {
    "vertebral_bodies_graded": "Vertebral bodies with a Genant grade (n/a: not analysed)",
    "possible_fracture_levels": "Vertebrae graded Genant 1 or more (height loss >= 20 %), "
    "with their grade and shape",
    "listhesis_levels": "Discs with a slip graded Meyerding I or more, with its grade",
    "flag_possible_fracture": "A vertebral body lost 20 % or more of a height (Genant grade "
    ">= 1): check it in the subject report's vertebral-body figure",
    "flag_listhesis": "A vertebra slipped 10 % or more of the lower endplate's depth over the "
    "one below (Meyerding grade >= I)",
}
FLAGS = ("possible_fracture", "listhesis")


def vertebra_table(root: Path, stamp: Mapping) -> Path | None:
    """The image's vertebral-body table, when its stamp lists one."""
    for rel in stamp.get("outputs") or []:
        if rel.endswith("_morphometry.tsv") and "_seg-vertparts_" in rel:
            return Path(root) / rel
    return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else math.nan


def vertebra_columns(root: Path, stamp: Mapping) -> tuple[dict[str, object], dict[str, str]]:
    """The group columns of one image and its raised flags (flag -> reason); both empty
    when the image has no vertebral-body table."""
    table = vertebra_table(root, stamp)
    if table is None:
        return {}, {}
    rows = read_tsv(table)
    graded = [
        r for r in rows if r.get("structure") == "vertebra" and _number(r.get("genant_grade")) >= 0
    ]
    fractures = [
        f"{r['level']} (grade {int(_number(r['genant_grade']))} {r['deformity_shape']})"
        for r in graded
        if _number(r.get("genant_grade")) >= 1
    ]
    slips = [
        f"{r['level']} ({r['meyerding_grade']}, {_number(r.get('slip_percent')):.0f} %)"
        for r in rows
        if r.get("structure") == "disc"
        and r.get("meyerding_grade") in ("I", "II", "III", "IV", "V")
    ]
    reasons = {}
    if fractures:
        reasons["possible_fracture"] = "vertebral height loss: " + ", ".join(fractures)
    if slips:
        reasons["listhesis"] = "slip: " + ", ".join(slips)
    columns: dict[str, object] = {
        "vertebral_bodies_graded": len(graded),
        "possible_fracture_levels": ", ".join(fractures) or None,
        "listhesis_levels": ", ".join(slips) or None,
        "flag_possible_fracture": int(bool(fractures)),
        "flag_listhesis": int(bool(slips)),
    }
    return columns, reasons


def sidecar() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {k: {"Description": v} for k, v in COLUMNS.items()}
    for flag in FLAGS:
        out[f"flag_{flag}"]["Levels"] = {"0": "no", "1": "yes"}
    return out
