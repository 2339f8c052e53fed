"""Ground truth of phantom cord lesions, computed from the continuous anatomy (no voxels).

Each lesion is sampled on a 0.1 mm grid of the spine frame (s along the canal, a anterior,
l right), clipped to the cord's elliptic cross-section, so its volume, extents, bridges and
levels are those of the shape the renderer draws, not of any image grid.
"""

from __future__ import annotations

import numpy as np

from bids_app.phantom.anatomy import Anatomy, Lesion
from bids_app.plumbing import labels as L

_H = 0.1  # mm
# Levels where the demo draws lesions (the cord is thick there; C1 and C2 are left out).
LESION_LEVELS = ("C3", "C4", "C5", "C6", "C7", *(f"T{i}" for i in range(1, 11)))


def _cord_radii(anat: Anatomy, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cord (AP, LR) radii at arc lengths s, as the renderer computes them."""
    k = anat.radius_knots_s
    taper = np.sqrt(np.clip((anat.cord_end_s - s) / (20 * anat.scale), 0, 1))
    ap = np.interp(s, k, anat.cord_radii[:, 0]) * taper * anat.ap_factor(s)
    lr = np.interp(s, k, anat.cord_radii[:, 1]) * taper
    return ap, lr


def lesion_truth(anat: Anatomy, index: int) -> dict:
    """Truth of `anat.lesions[index]` with the keys of `bids_app.lesions.measures.COLUMNS`."""
    les = anat.lesions[index]
    s_c = anat.lesion_centre_s(les)
    hs, ha, hl = les.length / 2, les.width / 2, les.lr / 2
    s = np.arange(s_c - hs, s_c + hs + _H, _H)
    a = np.arange(les.offset - ha, les.offset + ha + _H, _H)
    lr = np.arange(-hl, hl + _H, _H)
    kra, krl = _cord_radii(anat, s)
    S, A, R = np.meshgrid(s - s_c, a, lr, indexing="ij")
    inside = ((S / hs) ** 2 + ((A - les.offset) / ha) ** 2 + (R / hl) ** 2 < 1) & (
        (A / kra[:, None, None]) ** 2 + (R / krl[:, None, None]) ** 2 < 1
    )
    rows = np.flatnonzero(inside.any((1, 2)))
    area = inside.sum((1, 2))[rows] * _H**2
    cord_area = np.pi * kra[rows] * krl[rows]
    width = max(np.ptp(a[inside[i].any(1)]) + _H for i in rows)
    mid = inside[:, :, np.argmin(np.abs(lr))]
    mid_rows = np.flatnonzero(mid.any(1))
    ventral = [kra[i] - a[mid[i]].max() for i in mid_rows]
    dorsal = [a[mid[i]].min() + kra[i] for i in mid_rows]
    level = anat.level_at_s(S[inside] + s_c)
    order = [int(v) for v in dict.fromkeys(np.sort(level)) if v]
    names = [L.level_name(v) for v in order]
    return {
        "volume_mm3": float(inside.sum() * _H**3),
        "length_mm": float(rows.size * _H),
        "width_mm": float(width),
        "max_equivalent_diameter_mm": float(2 * np.sqrt(area.max() / np.pi)),
        "max_axial_damage_ratio": float((area / cord_area).max()),
        "midsagittal_length_mm": float(mid_rows.size * _H),
        "midsagittal_width_mm": float(max(np.ptp(a[mid[i]]) + _H for i in mid_rows)),
        "ventral_bridge_mm": float(min(ventral)),
        "dorsal_bridge_mm": float(min(dorsal)),
        "total_bridge_mm": float(min(v + d for v, d in zip(ventral, dorsal, strict=True))),
        "levels": ",".join(names),
        "level_shares": {
            nm: float((level == v).mean()) for nm, v in zip(names, order, strict=True)
        },
        "level_main": L.level_name(max(order, key=lambda v: (level == v).sum())),
    }


def random_lesions(
    rng: np.random.Generator,
    anat: Anatomy,
    max_count: int = 3,
    levels: tuple[str, ...] = LESION_LEVELS,
) -> tuple[Lesion, ...]:
    """0 to `max_count` lesions at distinct `levels`, sizes like MS and SCI lesions; a draw
    that would come within 5 mm of an earlier lesion along the cord is dropped."""
    count = min(int(rng.integers(0, max_count + 1)), len(levels))
    chosen: list[Lesion] = []
    spans: list[tuple[float, float]] = []
    for k in rng.choice(len(levels), size=count, replace=False):
        les = Lesion(
            level=levels[int(k)],
            length=float(rng.uniform(6, 30)),
            width=float(rng.uniform(2.5, 5.0)),
            position=float(rng.uniform(0.2, 0.8)),
            offset=float(rng.uniform(-1.0, 1.0)),
        )
        centre = anat.lesion_centre_s(les)
        span = (centre - les.length / 2 - 5, centre + les.length / 2 + 5)
        if all(span[1] < lo or span[0] > hi for lo, hi in spans):
            chosen.append(les)
            spans.append(span)
    return tuple(sorted(chosen, key=anat.lesion_centre_s))
