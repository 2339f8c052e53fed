"""Lesion columns and flags of the group QC table, read from each image's lesion table.

Only images the lesion model ran on have them (n/a elsewhere); the columns appear in
group_qc.tsv only when some image has a lesion table. Two flags make the QC status `check`:
`lesion_outside_cord` (a lesion mostly outside SpineSeg's canal: a false positive, or a
cord/canal segmentation error) and `lesion_at_fov_edge` (a lesion cut by the field of view:
its length is unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from bids_app.plumbing.labels import VERTEBRAE
from bids_app.qc.records import read_tsv

OUTSIDE_SHARE = 0.5  # a lesion with more of its voxels outside the canal is flagged
COLUMNS: dict[str, str] = {
    "lesion_count": "Number of lesions (n/a: the lesion model did not run on this image)",
    "lesion_volume_mm3": "Total lesion volume (mm^3)",
    "lesion_level_highest": "Most superior vertebral level reached by a lesion",
    "lesion_level_lowest": "Most inferior vertebral level reached by a lesion",
    "flag_lesion_outside_cord": f"A lesion has over {OUTSIDE_SHARE:.0%} of its voxels outside "
    "the spinal canal (cord included)",
    "flag_lesion_at_fov_edge": "A lesion reaches the edge of the field of view (cut)",
}
FLAGS = ("lesion_outside_cord", "lesion_at_fov_edge")
_ORDER = {name: i for i, name in enumerate([*VERTEBRAE.values(), "S"])}


def lesion_table(root: Path, stamp: Mapping) -> Path | None:
    """The image's per-lesion table, when its stamp lists one."""
    for rel in stamp.get("outputs") or []:
        if rel.endswith("_morphometry.tsv") and "_seg-lesion_" in rel:
            return Path(root) / rel
    return None


def lesion_columns(root: Path, stamp: Mapping) -> tuple[dict[str, object], dict[str, str]]:
    """The group columns of one image and its raised lesion flags (flag -> reason); both
    empty when the lesion model did not run on it."""
    table = lesion_table(root, stamp)
    if table is None:
        return {}, {}
    rows = read_tsv(table)
    levels = [
        name for row in rows for name in str(row.get("levels", "")).split(",") if name in _ORDER
    ]
    levels.sort(key=_ORDER.__getitem__)
    outside = [r for r in rows if _num(r.get("outside_cord_share")) > OUTSIDE_SHARE]
    cut = [r for r in rows if _num(r.get("touches_fov_edge")) == 1]
    reasons = {}
    if outside:
        reasons["lesion_outside_cord"] = f"lesion(s) {_ids(outside)} mostly outside the canal"
    if cut:
        reasons["lesion_at_fov_edge"] = f"lesion(s) {_ids(cut)} cut by the field of view"
    columns: dict[str, object] = {
        "lesion_count": len(rows),
        "lesion_volume_mm3": float(sum(_num(r.get("volume_mm3")) for r in rows)),
        "lesion_level_highest": levels[0] if levels else None,
        "lesion_level_lowest": levels[-1] if levels else None,
        "flag_lesion_outside_cord": int(bool(outside)),
        "flag_lesion_at_fov_edge": int(bool(cut)),
    }
    return columns, reasons


def _num(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(out) else out


def _ids(rows: list[dict]) -> str:
    return ", ".join(str(r.get("lesion_id")) for r in rows)


def sidecar() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {k: {"Description": v} for k, v in COLUMNS.items()}
    out["lesion_volume_mm3"]["Units"] = "mm^3"
    for flag in FLAGS:
        out[f"flag_{flag}"]["Levels"] = {"0": "no", "1": "yes"}
    return out
