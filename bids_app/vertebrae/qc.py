"""Vertebral-body columns and flags of the group tables, read from each image's table.

Two flags make the QC status `check` and put the image on the work list:
`possible_fracture` (a body graded Genant 1 or more: it lost 20 % or more of a height) and
`listhesis` (a slip graded Meyerding I or more, i.e. 10 % or more of the lower endplate's
depth). Both are pointers for the reviewer, image measures for research, not diagnoses.

The group morphometry tables get every body's heights, ratios, Genant grade and shape and
every disc's slip and Meyerding grade (`measures()`), with the reason of every n/a; their
descriptions and units are those of the per-image table's sidecar.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bids_app.qc.measures import Column
from bids_app.qc.records import read_tsv
from bids_app.vertebrae.grades import LISTHESIS_MIN_PERCENT, MEYERDING

NOT_A_DIAGNOSIS = "an image measure for research, not a diagnosis"
COLUMNS: dict[str, str] = {
    "vertebral_bodies_graded": "Vertebral bodies with a Genant grade (n/a: not analysed)",
    "possible_fracture_levels": "Vertebrae graded Genant 1 or more (height loss >= 20 %), "
    "with their grade and shape",
    "listhesis_levels": "Discs with a slip graded Meyerding I or more, with its grade and "
    "percentage",
    "flag_possible_fracture": "A vertebral body lost 20 % or more of a height (Genant grade "
    f">= 1): check it in the subject report's vertebral-body figure; {NOT_A_DIAGNOSIS}",
    "flag_listhesis": f"A vertebra slipped {LISTHESIS_MIN_PERCENT:g} % or more of the lower "
    f"endplate's depth over the one below (Meyerding grade >= I); {NOT_A_DIAGNOSIS}",
}
FLAGS = ("possible_fracture", "listhesis")

# (per-image column, long name), per structure: the group tables' vertebral-body measures.
_MEASURES: dict[str, tuple[tuple[str, str], ...]] = {
    "vertebra": (
        ("anterior_height_mm", "Anterior body height"),
        ("middle_height_mm", "Middle body height"),
        ("posterior_height_mm", "Posterior body height"),
        ("body_depth_mm", "Body AP depth"),
        ("anterior_posterior_ratio", "Anterior / posterior height ratio"),
        ("middle_posterior_ratio", "Middle / posterior height ratio"),
        ("posterior_neighbour_ratio", "Posterior height / neighbours' ratio"),
        ("height_loss_percent", "Body height loss"),
        ("genant_grade", "Genant grade"),
        ("deformity_shape", "Deformity shape"),
    ),
    "disc": (
        ("slip_mm", "Listhesis offset"),
        ("slip_percent", "Listhesis percentage"),
        ("meyerding_grade", "Meyerding grade"),
    ),
}
# The wide table's column of why a level's measures are n/a, per structure.
REASON_COLUMNS: dict[str, str] = {"vertebra": "body_na_reason", "disc": "slip_na_reason"}
LEVELS: dict[str, dict[str, str]] = {
    "genant_grade": {
        "0": "height loss below 20 %",
        "1": "20 to 25 %",
        "2": "25 to 40 %",
        "3": "above 40 %",
    },
    "deformity_shape": {
        "normal": "grade 0",
        "wedge": "anterior height lost most",
        "biconcave": "middle height lost most",
        "crush": "posterior height lost against the neighbouring bodies",
    },
    "meyerding_grade": {
        "none": f"slip below {LISTHESIS_MIN_PERCENT:g} % or posterior (retrolisthesis)",
        **dict(
            zip(MEYERDING, ("< 25 %", "25-50 %", "50-75 %", "75-100 %", "> 100 %"), strict=True)
        ),
    },
}


@cache
def measures() -> tuple[Column, ...]:
    """The vertebral-body measures as group columns, described as in the per-image table."""
    # Here, not at the top: heights imports bids_app.qc.geometry, whose package imports
    # the group level, which imports this module.
    from bids_app.vertebrae.heights import LEVEL_COLUMNS

    per_image = {c.name: c for c in LEVEL_COLUMNS}
    return tuple(
        Column(
            name,
            long_name,
            per_image[name].description,
            per_image[name].units,
            frozenset({structure}),
        )
        for structure, names in _MEASURES.items()
        for name, long_name in names
    )


REASONS: tuple[Column, ...] = (
    Column(
        REASON_COLUMNS["vertebra"],
        "Vertebral-body n/a reason",
        "Why this vertebra's body measures are n/a (C1, C2, transitional, thick slices, not "
        "seen whole, cut by the field of view...; 'measure: reason' when only some are); n/a "
        "when all were measured or the image has no vertebral-body table.",
        structures=frozenset({"vertebra"}),
    ),
    Column(
        REASON_COLUMNS["disc"],
        "Listhesis n/a reason",
        "Why this disc's slip is n/a (a body next to it not measured, with that body's "
        "reason); n/a when measured or the image has no vertebral-body table.",
        structures=frozenset({"disc"}),
    ),
)
# Why one measure is n/a when the rest of its row was measured.
_MEASURE_REASONS = {
    "posterior_neighbour_ratio": "no measured body directly above or below",
}
_NOT_MEASURED = "not measurable on the body's mid-sagittal section"


def vertebra_table(root: Path, stamp: Mapping) -> Path | None:
    """The image's vertebral-body table, when its stamp lists one."""
    for rel in stamp.get("outputs") or []:
        if rel.endswith("_morphometry.tsv") and "_seg-vertparts_" in rel:
            return Path(root) / rel
    return None


def read_levels(root: Path, stamp: Mapping) -> list[dict[str, object]] | None:
    """The rows of the image's vertebral-body table (None without one)."""
    table = vertebra_table(root, stamp)
    return read_tsv(table) if table is not None else None


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else math.nan


def _known(value: object) -> bool:
    """A measured value: a finite number, or a grade or shape other than 'n/a'."""
    if isinstance(value, str):
        return value not in ("", "n/a")
    return math.isfinite(_number(value))


@dataclass(frozen=True)
class LevelValue:
    """One measure of one level: its value (NaN when n/a) and why it is n/a (None else)."""

    index: object
    level: str
    structure: str
    measure: Column
    value: object
    na_reason: str | None


def level_values(rows: Sequence[Mapping[str, object]]) -> Iterator[LevelValue]:
    """Every group measure of every row of an image's vertebral-body table, n/a ones too
    (a row without a level, as in a damaged table, has none)."""
    for row in rows:
        structure, level = str(row.get("structure")), row.get("level")
        if not isinstance(level, str) or structure not in REASON_COLUMNS:
            continue
        reason = row.get("na_reason")
        for col in measures():
            if structure not in col.structures:
                continue
            value = row.get(col.name)
            if _known(value):
                yield LevelValue(row.get("index"), level, structure, col, value, None)
                continue
            why = str(reason) if _known(reason) else _MEASURE_REASONS.get(col.name, _NOT_MEASURED)
            yield LevelValue(row.get("index"), level, structure, col, math.nan, why)


def level_reasons(values: Sequence[LevelValue]) -> dict[tuple[str, str], str]:
    """(level, reason column) -> why its measures are n/a: the row's reason when every
    measure is n/a, else 'measure: reason' for each n/a one."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    counts: dict[tuple[str, str], int] = {}
    for v in values:
        key = (v.level, REASON_COLUMNS[v.structure])
        counts[key] = counts.get(key, 0) + 1
        if v.na_reason is not None:
            out.setdefault(key, {})[v.measure.name] = v.na_reason
    reasons = {}
    for key, missing in out.items():
        distinct = set(missing.values())
        if len(missing) == counts[key] and len(distinct) == 1:
            reasons[key] = distinct.pop()
        else:
            reasons[key] = "; ".join(f"{m}: {why}" for m, why in missing.items())
    return reasons


def vertebra_columns(
    rows: Sequence[Mapping[str, object]] | None,
) -> tuple[dict[str, object], dict[str, str]]:
    """The group QC columns of one image and its raised flags (flag -> reason), from the rows
    of its vertebral-body table (`read_levels`); both empty (n/a) when the image has no
    table (None), or one without a level column."""
    if rows is None or any("level" not in r for r in rows):
        return {}, {}
    graded = [
        r for r in rows if r.get("structure") == "vertebra" and _number(r.get("genant_grade")) >= 0
    ]
    fractures = [
        f"{r.get('level')} (grade {int(_number(r['genant_grade']))} {r.get('deformity_shape')})"
        for r in graded
        if _number(r.get("genant_grade")) >= 1
    ]
    slips = [
        f"{r.get('level')} ({r['meyerding_grade']}, {_number(r.get('slip_percent')):.0f} %)"
        for r in rows
        if r.get("structure") == "disc" and r.get("meyerding_grade") in MEYERDING
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
    """group_qc.json entries of the vertebral-body columns."""
    out: dict[str, dict[str, object]] = {k: {"Description": v} for k, v in COLUMNS.items()}
    for flag in FLAGS:
        out[f"flag_{flag}"]["Levels"] = {"0": "no", "1": "yes"}
    return out
