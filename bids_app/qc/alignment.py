"""Spinal alignment angles from the endplates of the final labels, in world coordinates.

An endplate is the interface between a vertebra and its disc: the vertebra's voxels that touch
the disc. Its normal (smallest principal axis) is read in scanner RAS mm, so the angles do not
depend on voxel order, size or obliquity. Sagittal angles are measured in the patient's
sagittal (y-z) plane, coronal ones in the coronal (x-z) plane.

An angle is given only when the levels it needs are in the image, not cut by its border, and
named from a found landmark or a localizer: with levels relative to an assumed top disc, "T4"
may be any vertebra and an angle named after it would mislead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import SPINE_ORDER, SUPERIOR, LabelGeometry, to_world

# name -> (upper endplate (vertebra, disc), lower endplate (vertebra, disc), sign).
# The angle is sign * (sagittal tilt of the lower endplate - tilt of the upper one), so that
# a normal lordosis and a normal kyphosis are both positive.
SAGITTAL: dict[str, tuple[tuple[int, int], tuple[int, int], int]] = {
    "cervical_lordosis_deg": ((12, 63), (17, 71), 1),  # C2 inferior to C7 inferior
    "thoracic_kyphosis_deg": ((24, 74), (32, 91), -1),  # T4 superior to T12 inferior
    "lumbar_lordosis_deg": ((41, 91), (L.SACRUM, 100), 1),  # L1 superior to S1 superior
}
TITLES: dict[str, str] = {
    "cervical_lordosis_deg": "Cervical lordosis (C2-C7)",
    "thoracic_kyphosis_deg": "Thoracic kyphosis (T4-T12)",
    "lumbar_lordosis_deg": "Lumbar lordosis (L1-S1)",
}
COBB_VERTEBRAE: tuple[int, ...] = (*range(21, 33), *range(41, 47))
COBB_MIN_VERTEBRAE = 5
CORE = 1.5  # endplate points kept within this many standard deviations of the disc's centre


def endplate_normal(geom: LabelGeometry, vertebra: int, disc: int) -> np.ndarray | None:
    """Unit normal (pointing superior) of the interface between a vertebra and a disc."""
    plate = endplate(geom, vertebra, disc)
    return plate[1] if plate is not None else None


def endplate(geom: LabelGeometry, vertebra: int, disc: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre, unit normal pointing superior) of the interface between a vertebra and a disc.

    The interface is the set of voxel faces with the vertebra on one side and the disc on the
    other. Their oriented areas summed in world mm give the area vector of the surface they
    approximate, exactly for a plane however the voxel grid cuts it (a point fit to the
    staircase is off by up to the step angle). Only faces under the disc's core count
    (within `CORE` standard deviations of its centre): pedicles touching the disc's back
    would tilt the sum.
    """
    if vertebra not in geom.boxes or disc not in geom.boxes:
        return None
    box = tuple(
        slice(max(min(a.start, b.start) - 1, 0), min(max(a.stop, b.stop) + 1, n))
        for a, b, n in zip(geom.boxes[vertebra], geom.boxes[disc], geom.data.shape, strict=True)
    )
    sub = geom.data[box]
    origin = np.array([s.start for s in box], float)
    disc_pts = geom.coords(disc)
    centre = disc_pts.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(disc_pts.T))
    scale = np.sqrt(np.maximum(evals[1:], 1e-9))
    m = geom.affine[:3, :3]
    cofactor = np.linalg.det(m) * np.linalg.inv(m).T  # column k: world area vector of face k
    area = np.zeros(3)
    centres = []
    for k in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[k], hi[k] = slice(None, -1), slice(1, None)
        a, b = sub[tuple(lo)], sub[tuple(hi)]
        for sign, first, second in ((1, vertebra, disc), (-1, disc, vertebra)):
            ijk = np.argwhere((a == first) & (b == second)).astype(float) + origin
            ijk[:, k] += 0.5  # face centre
            world = to_world(geom.affine, ijk)
            inplane = (world - centre) @ evecs[:, 1:] / scale
            core = (inplane**2).sum(1) <= CORE**2
            area += sign * int(core.sum()) * cofactor[:, k]
            centres.append(world[core])
    norm = float(np.linalg.norm(area))
    if norm == 0:
        return None
    normal = area / norm
    axis = geom.spine_axis_near(centre)
    normal = normal if normal @ (SUPERIOR if axis is None else axis) >= 0 else -normal
    return np.concatenate(centres).mean(0), normal


def sagittal_tilt(normal: np.ndarray) -> float:
    """Degrees the normal leans anteriorly from superior, in the sagittal plane."""
    return math.degrees(math.atan2(normal[1], normal[2]))


def coronal_tilt(normal: np.ndarray) -> float:
    """Degrees the normal leans towards the patient's left (RAS +x) from superior."""
    return math.degrees(math.atan2(normal[0], normal[2]))


def _usable(geom: LabelGeometry, labels: Sequence[int]) -> bool:
    """All labels present and not cut by the image border along the spine (a lateral cut
    trims transverse processes and leaves the endplates whole)."""
    for x in labels:
        if x not in geom.boxes:
            return False
        axis = geom.spine_axis_near(geom.centroid(x))
        if geom.touches_edge(x, SUPERIOR if axis is None else axis):
            return False
    return True


def cobb(geom: LabelGeometry) -> dict[str, object] | None:
    """Largest coronal tilt difference between two thoracic/lumbar vertebrae, with the pair.

    A vertebra's tilt is the mean of its available endplate tilts. Needs at least
    `COBB_MIN_VERTEBRAE` vertebrae with an endplate, uncut by the image border.
    """
    tilts: dict[int, float] = {}
    for v in COBB_VERTEBRAE:
        if not _usable(geom, [v]):
            continue
        discs = [d for d in geom.neighbours(v) if d in L.DISCS]
        normals = [n for n in (endplate_normal(geom, v, d) for d in discs) if n is not None]
        if normals:
            tilts[v] = float(np.mean([coronal_tilt(n) for n in normals]))
    if len(tilts) < COBB_MIN_VERTEBRAE:
        return None
    upper, lower = max(
        itertools.combinations(tilts, 2), key=lambda p: abs(tilts[p[0]] - tilts[p[1]])
    )
    return {
        "angle_deg": abs(tilts[upper] - tilts[lower]),
        "upper_end_vertebra": L.level_name(upper),
        "lower_end_vertebra": L.level_name(lower),
    }


def alignment(geom: LabelGeometry, levels_trusted: bool) -> dict[str, object]:
    """Sagittal angles and the coronal Cobb estimate; None for what cannot be measured.

    `levels_trusted` is False when level names are relative only (no landmark, no localizer);
    every angle is then None, with a note saying why.
    """
    out: dict[str, object] = {name: None for name in SAGITTAL}
    out["coronal_cobb"] = None
    if not levels_trusted:
        out["note"] = "levels are relative only (no landmark or localizer): no angle given"
        return out
    for name, ((v1, d1), (v2, d2), sign) in SAGITTAL.items():
        if not _usable(geom, [v1, d1, v2, d2]):
            continue
        n1, n2 = endplate_normal(geom, v1, d1), endplate_normal(geom, v2, d2)
        if n1 is not None and n2 is not None:
            out[name] = sign * (sagittal_tilt(n2) - sagittal_tilt(n1))
    out["coronal_cobb"] = cobb(geom)
    return out


def drawn_angles(
    geom: LabelGeometry, data: dict[str, object]
) -> list[tuple[str, float, list[tuple[np.ndarray, np.ndarray]]]]:
    """(title, degrees, both endplates as (centre, normal)) of each sagittal angle in `data`
    (an `alignment` result), for the curvature figure."""
    out = []
    for name, ((v1, d1), (v2, d2), _) in SAGITTAL.items():
        value = data.get(name)
        plates = [endplate(geom, v1, d1), endplate(geom, v2, d2)]
        if isinstance(value, float) and all(p is not None for p in plates):
            out.append((TITLES[name], value, [p for p in plates if p is not None]))
    return out


def centroid_line(geom: LabelGeometry) -> list[np.ndarray]:
    """Disc centroids from top to bottom: the line of the vertebral body column."""
    return [geom.centroid(x) for x in SPINE_ORDER if x in L.DISCS and x in geom.boxes]
