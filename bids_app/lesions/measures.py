"""Measures of each cord lesion, in scanner millimetres, whatever the voxel grid.

Each lesion (a 26-connected component of the lesion mask) is measured in its own cord frame:
`t` along the cord (the principal axis of the cord within 20 mm of the lesion, pointing
inferiorly), `a` anterior (scanner A made perpendicular to `t`), `r` completing the frame.
Lesion and cord masks are sampled (nearest voxel) on a 0.5 mm grid of that frame, so axial
cross-sections are perpendicular to the cord and the numbers do not depend on the voxel
order, the voxel size or the obliquity of the scan (within about a voxel). The cord here is
SpineSeg's cord label plus the lesion itself (the lesion is cord tissue). Definitions: README
"Lesions". Levels come from `bids_app.lesions.levels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bids_app.lesions.levels import LevelMap, level_names
from bids_app.plumbing import labels as L

STEP = 0.5  # mm, sampling of the cord frame
HALF_WIDTH = 15.0  # mm, half-size of the frame grid across the cord
CORD_RADIUS = 20.0  # mm, cord around the lesion used for its axis
OUTSIDE_TOLERANCE = 1  # voxels of dilation of the canal before a lesion voxel counts outside

# Column -> (description, unit or None). The order is the TSV's.
COLUMNS: dict[str, tuple[str, str | None]] = {
    "lesion_id": ("Lesion number, superior first; its value in the lesion mask", None),
    "volume_mm3": ("Lesion volume: voxel count times voxel volume", "mm^3"),
    "length_mm": (
        "Extent along the cord axis (n/a when the lesion touches the field-of-view edge)",
        "mm",
    ),
    "width_mm": (
        "Largest antero-posterior extent in any cross-section perpendicular to the cord",
        "mm",
    ),
    "max_equivalent_diameter_mm": (
        "Largest diameter of the circle with the lesion's area, over cross-sections",
        "mm",
    ),
    "max_axial_damage_ratio": (
        "Largest ratio of lesion area to cord area (lesion included), over cross-sections",
        None,
    ),
    "midsagittal_length_mm": (
        "Extent along the cord in the sagittal plane through the cord's centre "
        "(n/a when the lesion touches the field-of-view edge)",
        "mm",
    ),
    "midsagittal_width_mm": (
        "Largest antero-posterior extent in the sagittal plane through the cord's centre",
        "mm",
    ),
    "ventral_bridge_mm": (
        "Smallest thickness of cord tissue anterior to the lesion in the midsagittal plane",
        "mm",
    ),
    "dorsal_bridge_mm": (
        "Smallest thickness of cord tissue posterior to the lesion in the midsagittal plane",
        "mm",
    ),
    "total_bridge_mm": (
        "Smallest sum of the ventral and dorsal tissue bridges in one cross-section",
        "mm",
    ),
    "level_highest": ("Most superior vertebral level the lesion reaches", None),
    "level_lowest": ("Most inferior vertebral level the lesion reaches", None),
    "levels": ("Vertebral levels the lesion spans, superior first", None),
    "level_shares": ("Share of the lesion volume at each level (level:share)", None),
    "centroid_x_mm": ("Lesion centroid, scanner x (RAS)", "mm"),
    "centroid_y_mm": ("Lesion centroid, scanner y (RAS)", "mm"),
    "centroid_z_mm": ("Lesion centroid, scanner z (RAS)", "mm"),
    "outside_cord_share": (
        "Share of lesion voxels outside SpineSeg's spinal canal (cord included), "
        f"dilated by {OUTSIDE_TOLERANCE} voxel",
        None,
    ),
    "touches_fov_edge": ("1 when the lesion reaches the edge of the field of view, else 0", None),
}
LOAD_COLUMNS: dict[str, tuple[str, str | None]] = {
    "level": ("Vertebral level (from SpineSeg's labels along the cord)", None),
    "lesion_count": ("Lesions with volume at this level", None),
    "lesion_volume_mm3": ("Lesion volume at this level", "mm^3"),
    "cord_volume_mm3": ("Cord volume at this level (lesions included)", "mm^3"),
    "lesion_load": ("Lesion volume divided by cord volume at this level", None),
}


@dataclass
class LesionReport:
    """Per-lesion rows (COLUMNS), per-level load rows (LOAD_COLUMNS) and the numbered mask."""

    rows: list[dict] = field(default_factory=list)
    load: list[dict] = field(default_factory=list)
    ids: np.ndarray | None = None  # int16 lesion numbers on the input grid


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _frame(cord_pts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rows t (inferior), a (anterior), r of the cord frame at `centre`."""
    near = cord_pts[np.linalg.norm(cord_pts - centre, axis=1) < CORD_RADIUS]
    t = np.array([0.0, 0.0, -1.0])
    if len(near) >= 10:
        _, _, vt = np.linalg.svd(near - near.mean(0), full_matrices=False)
        t = vt[0] if vt[0][2] < 0 else -vt[0]
    a = np.array([0.0, 1.0, 0.0]) - t[1] * t
    a /= np.linalg.norm(a)
    return np.stack([t, a, np.cross(t, a)])


def _sample(
    masks: list[np.ndarray], affine: np.ndarray, centre: np.ndarray, frame: np.ndarray, u_lim
) -> list[np.ndarray]:
    """Each mask sampled (nearest voxel) on the 0.5 mm cord-frame grid, axes (u, v, w)."""
    u = np.arange(u_lim[0], u_lim[1] + STEP, STEP)
    vw = np.arange(-HALF_WIDTH, HALF_WIDTH + STEP / 2, STEP)
    gu, gv, gw = np.meshgrid(u, vw, vw, indexing="ij")
    pts = centre + np.stack([gu, gv, gw], -1) @ frame
    idx = np.rint((pts - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(np.int64)
    shape = np.array(masks[0].shape)
    ok = np.all((idx >= 0) & (idx < shape), axis=-1)
    idx = np.where(ok[..., None], idx, 0)
    return [m[idx[..., 0], idx[..., 1], idx[..., 2]] & ok for m in masks]


def _extent(mask_1d_rows: np.ndarray) -> float:
    """Largest (last - first + 1) x STEP over rows of a 2-D boolean array."""
    best = 0.0
    for row in mask_1d_rows:
        hit = np.flatnonzero(row)
        if hit.size:
            best = max(best, (hit[-1] - hit[0] + 1) * STEP)
    return best


def _cross_sections(les: np.ndarray, cord: np.ndarray) -> dict[str, float]:
    rows = np.flatnonzero(les.any((1, 2)))
    area = les.sum((1, 2))[rows] * STEP**2
    cord_area = cord.sum((1, 2))[rows] * STEP**2
    return {
        "length_mm": rows.size * STEP,
        "width_mm": max(_extent(les[i].T) for i in rows),  # v extent, over w columns
        "max_equivalent_diameter_mm": float(2 * np.sqrt(area.max() / np.pi)),
        "max_axial_damage_ratio": float((area / np.maximum(cord_area, area)).max()),
    }


def _midsagittal(les: np.ndarray, cord: np.ndarray) -> dict[str, float]:
    """Measures in the plane of constant w through the cord's centre at the lesion."""
    rows = np.flatnonzero(les.any((1, 2)))
    w_idx = np.nonzero(cord[rows])[2]
    plane = round(float(w_idx.mean())) if w_idx.size else les.shape[2] // 2
    lp, cp = les[:, :, plane], cord[:, :, plane]
    hit = np.flatnonzero(lp.any(1))
    out = {"midsagittal_length_mm": hit.size * STEP, "midsagittal_width_mm": _extent(lp)}
    ventral, dorsal, total = [], [], []
    for i in hit:
        v = np.flatnonzero(lp[i])
        cv = np.flatnonzero(cp[i])
        ventral.append((cv > v[-1]).sum() * STEP)  # +v is anterior
        dorsal.append((cv < v[0]).sum() * STEP)
        total.append(ventral[-1] + dorsal[-1])
    nan = float("nan")
    out["ventral_bridge_mm"] = min(ventral) if ventral else nan
    out["dorsal_bridge_mm"] = min(dorsal) if dorsal else nan
    out["total_bridge_mm"] = min(total) if total else nan
    return out


def measure_lesions(
    lesion: np.ndarray, spine: np.ndarray | None, affine: np.ndarray
) -> LesionReport:
    """Measure every lesion of a mask (any non-zero voxel) against the spine labels.

    `spine`: SpineSeg's final (or step-1) labels on the same grid, or None (then no cord
    frame, levels or bridges: the frame falls back to the scanner axes). An empty mask
    gives an empty report.
    """
    lesion = np.asarray(lesion) > 0
    ids, n = ndimage.label(lesion, np.ones((3, 3, 3), bool))
    numbered = np.zeros(lesion.shape, np.int16)
    report = LesionReport(ids=numbered)
    if n == 0:
        return report
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    spine = np.zeros(lesion.shape, np.uint8) if spine is None else np.asarray(spine)
    cord = (spine == L.CORD) | lesion
    canal = ndimage.binary_dilation(
        (spine == L.CORD) | (spine == L.CANAL), iterations=OUTSIDE_TOLERANCE
    )
    cord_pts = _world(affine, np.argwhere(spine == L.CORD).astype(float))
    levels = LevelMap(spine, affine)
    # Number lesions superior first, so the numbers do not depend on the voxel order.
    comps = []
    for k in range(1, n + 1):
        idx = np.argwhere(ids == k)
        comps.append((idx, _world(affine, idx.astype(float))))
    comps.sort(key=lambda c: -c[1][:, 2].mean())
    last = np.array(lesion.shape) - 1
    level_volume: dict[int, float] = {}
    level_count: dict[int, int] = {}
    for number, (idx, pts) in enumerate(comps, start=1):
        numbered[tuple(idx.T)] = number
        centre = pts.mean(0)
        frame = _frame(cord_pts, centre)
        proj = (pts - centre) @ frame[0]
        diag = float(np.linalg.norm(affine[:3, :3], axis=0).max())
        u_lim = (proj.min() - diag - STEP, proj.max() + diag + STEP)
        comp = np.zeros(lesion.shape, bool)
        comp[tuple(idx.T)] = True
        les_s, cord_s = _sample([comp, cord], affine, centre, frame, u_lim)
        cord_s |= les_s
        edge = bool(np.any((idx == 0) | (idx == last)))
        row: dict = {"lesion_id": number, "volume_mm3": len(idx) * voxel_mm3}
        if les_s.any():
            row |= _cross_sections(les_s, cord_s) | _midsagittal(les_s, cord_s)
        if edge:
            row["length_mm"] = row["midsagittal_length_mm"] = float("nan")
        if not (spine == L.CORD).any():
            for key in ("ventral_bridge_mm", "dorsal_bridge_mm", "total_bridge_mm"):
                row[key] = float("nan")
        lv = levels.levels(pts)
        order = [int(v) for v in dict.fromkeys(lv[np.argsort(pts @ frame[0])]) if v]
        names = level_names(np.array(order))
        shares = {v: float((lv == v).mean()) for v in order}
        row["level_highest"] = names[0] if names else "n/a"
        row["level_lowest"] = names[-1] if names else "n/a"
        row["levels"] = ",".join(names) or "n/a"
        row["level_shares"] = (
            ",".join(f"{nm}:{shares[v]:.3f}" for nm, v in zip(names, order, strict=True)) or "n/a"
        )
        row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"] = (
            float(c) for c in centre
        )
        row["outside_cord_share"] = float(1 - canal[tuple(idx.T)].mean())
        row["touches_fov_edge"] = int(edge)
        report.rows.append({k: row.get(k, float("nan")) for k in COLUMNS})
        for v in order:
            level_volume[v] = level_volume.get(v, 0.0) + shares[v] * len(idx) * voxel_mm3
            level_count[v] = level_count.get(v, 0) + 1
    report.load = _level_load(level_volume, level_count, levels, cord, affine, voxel_mm3)
    return report


def _level_load(
    volume: dict[int, float],
    count: dict[int, int],
    levels: LevelMap,
    cord: np.ndarray,
    affine: np.ndarray,
    voxel_mm3: float,
) -> list[dict]:
    """One row per level holding lesion volume, superior first (label order is anatomical)."""
    if not volume:
        return []
    cord_lv = levels.levels(_world(affine, np.argwhere(cord).astype(float)))
    rows = []
    for v in sorted(volume):
        cord_mm3 = float((cord_lv == v).sum() * voxel_mm3)
        rows.append(
            {
                "level": L.level_name(v),
                "lesion_count": count[v],
                "lesion_volume_mm3": volume[v],
                "cord_volume_mm3": cord_mm3,
                "lesion_load": volume[v] / cord_mm3 if cord_mm3 else float("nan"),
            }
        )
    return rows
