"""Spinal alignment angles from the endplates of the final labels, in world coordinates.

An endplate is the interface between a vertebra and its disc. It is estimated as a plane
fitted (least squares) to the centres of the voxels on both sides of that interface: vertebra
voxels within a short distance of the disc and disc voxels as close to the vertebra. A fit to
voxel centres follows the staircase of a tilted surface whether or not the network left its
risers as gaps, which a sum of voxel-face normals does not (it sees only the treads). The
plane is read in scanner RAS mm, so the angles do not depend on voxel order, size or
obliquity. Sagittal angles are measured in the patient's sagittal (y-z) plane, coronal ones
in the coronal (x-z) plane.

Each endplate has its own plausibility check (`fit_endplate`): both labels present and not
cut by the border along the spine, the disc touching the vertebra over most of its core,
voxels fine enough along the normal to resolve a tilt, a plane that fits, and a normal near
the canal's direction. An angle is given only when both its endplates pass and the level
names come from a found landmark or a localizer: with levels relative to an assumed top disc,
"T4" may be any vertebra and an angle named after it would mislead. Otherwise it is None with
its reason in the result's `reasons`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import (
    SPINE_ORDER,
    SUPERIOR,
    LabelGeometry,
    anterior_frame,
    to_world,
    unit,
    voxel_extent,
)

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
CORE = 2.0  # endplate points kept within this many standard deviations of the disc's centre
# Plausibility of one endplate (see fit_endplate and the README's alignment section).
MIN_COVERAGE = 0.5  # share of the disc's core the vertebra must face
MAX_STEP_MM = 2.0  # one voxel along the normal; coarser slices cannot resolve a tilt
MAX_RESIDUAL_MM = 2.0  # RMS distance of the interface voxels from the fitted plane
MAX_TILT_STEP_DEG = 3.0  # one voxel across the endplate's AP depth, as a tilt
MAX_OFF_CANAL_DEG = 35.0  # between the endplate normal and the canal's direction
CELL_MM = 1.0  # in-plane cell size of the coverage count (at least one voxel)


@dataclass(frozen=True)
class Endplate:
    """A fitted endplate, in world RAS mm."""

    centre: np.ndarray  # mean of the interface voxel centres in the disc's core
    normal: np.ndarray  # unit, pointing superior
    half_width_mm: float  # half its antero-posterior depth (the drawn line's half length)


def _bridge_mm(geom: LabelGeometry, axis: np.ndarray) -> float:
    """How far from the other label an interface voxel may lie: two voxels along the spine,
    so that a one-voxel gap the network leaves on a riser still counts as interface."""
    return 2.0 * voxel_extent(geom.affine, axis) + 0.01


def grid_step(affine: np.ndarray, direction: np.ndarray) -> float:
    """Voxel size (mm) along the grid axis closest to a world direction: how finely the
    labels can place a surface facing that way (a tilted surface steps by this much)."""
    cols = affine[:3, :3]
    sizes = np.linalg.norm(cols, axis=0)
    return float(sizes[int(np.argmax(np.abs(direction @ cols) / sizes))])


def _cut(geom: LabelGeometry, label: int) -> bool:
    axis = geom.spine_axis_near(geom.centroid(label))
    return geom.touches_edge(label, SUPERIOR if axis is None else axis)


def near_voxels(geom: LabelGeometry, here: int, there: int, reach: float) -> np.ndarray:
    """World mm (n, 3) of the `here` voxel centres within `reach` mm of a `there` voxel
    centre (Euclidean on the grid's voxel sizes), in voxel index order.

    Only the part of `here`'s box within `reach` of `there`'s box can hold them, and only
    the grid offsets no longer than `reach` can join two such voxels: the `there` mask moved
    by each offset, OR-ed, marks them, as a distance transform of both labels' box did at
    several times the cost (each offset's length is computed as scipy's transform does).
    """
    zooms = geom.zooms
    m = np.floor(reach / zooms).astype(int) + 1  # one more than can reach: the lengths decide
    axes = list(zip(geom.boxes[here], geom.boxes[there], m, geom.data.shape, strict=True))
    lo = [max(h.start, t.start - k) for h, t, k, _ in axes]
    hi = [min(h.stop, t.stop + k) for h, t, k, _ in axes]
    if any(a >= b for a, b in zip(lo, hi, strict=True)):
        return np.empty((0, 3))
    mine = geom.data[tuple(map(slice, lo, hi))] == here
    # `there` around that part, m voxels wider on every side (zeros beyond the grid).
    olo = [max(a - k, 0) for a, (_, _, k, _) in zip(lo, axes, strict=True)]
    ohi = [min(b + k, n) for b, (_, _, k, n) in zip(hi, axes, strict=True)]
    theirs = np.pad(
        geom.data[tuple(map(slice, olo, ohi))] == there,
        [(k - (a - oa), k - (ob - b)) for a, b, oa, ob, k in zip(lo, hi, olo, ohi, m, strict=True)],
    )
    offsets = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in m), indexing="ij"), -1)
    scaled = offsets.astype(float) * zooms
    lengths = np.sqrt((scaled[..., 0] ** 2 + scaled[..., 1] ** 2) + scaled[..., 2] ** 2)
    near = np.zeros_like(mine)
    for a, b, c in offsets[lengths <= reach]:
        near |= theirs[
            m[0] + a : m[0] + a + mine.shape[0],
            m[1] + b : m[1] + b + mine.shape[1],
            m[2] + c : m[2] + c + mine.shape[2],
        ]
    ijk = np.argwhere(mine & near).astype(float) + np.array(lo, float)
    return to_world(geom.affine, ijk)


def fit_endplate(geom: LabelGeometry, vertebra: int, disc: int) -> Endplate | str:
    """The plane of the interface between a vertebra and a disc, or why it is not resolved.

    Returns an `Endplate`, or a one-line reason (str) naming the check that failed. Fitted
    once per label image: the angles, the Cobb estimate and the figure share the fits.
    """
    key = ("endplate", vertebra, disc)
    if key not in geom.memo:
        geom.memo[key] = _fit_endplate(geom, vertebra, disc)
    return geom.memo[key]  # type: ignore[return-value]


def _fit_endplate(geom: LabelGeometry, vertebra: int, disc: int) -> Endplate | str:
    names = f"{L.level_name(vertebra)}/{L.level_name(disc)}"
    for x in (vertebra, disc):
        if x not in geom.boxes:
            return f"{L.level_name(x)} not in the labels"
        if _cut(geom, x):
            return f"{L.level_name(x)} cut by the image border"
    disc_pts, centre = geom.coords(disc), geom.centroid(disc)
    canal = geom.spine_axis_near(centre)
    axis0, _ = geom.disc_frame(disc)
    axis = axis0 if axis0 is not None else (canal if canal is not None else SUPERIOR)
    step = grid_step(geom.affine, axis)
    if step > MAX_STEP_MM:
        return (
            f"{names}: thick slices, voxels {step:.1f} mm along the spine (at most "
            f"{MAX_STEP_MM:g} mm resolve an endplate's tilt)"
        )
    reach = _bridge_mm(geom, axis)
    near = [near_voxels(geom, vertebra, disc, reach), near_voxels(geom, disc, vertebra, reach)]
    # The disc's core in its own plane: pedicles and facets touching its back stay out.
    evecs = np.linalg.eigh(np.cov(disc_pts.T))[1]
    inplane_axes = np.stack([unit(v - (v @ axis) * axis) for v in evecs[:, 1:].T], 1)
    spread = np.sqrt(np.maximum(np.var((disc_pts - centre) @ inplane_axes, 0), 1e-9))

    def core(p: np.ndarray) -> np.ndarray:
        return p[((((p - centre) @ inplane_axes) / spread) ** 2).sum(1) <= CORE**2]

    bone, soft = core(near[0]), core(near[1])
    cell = max(CELL_MM, *(voxel_extent(geom.affine, inplane_axes[:, k]) for k in (0, 1)))

    def cells(p: np.ndarray) -> set[tuple[int, int]]:
        ij = np.floor(((p - centre) @ inplane_axes) / cell).astype(int)
        return set(zip(*ij.T.tolist(), strict=True))

    disc_cells = cells(core(disc_pts))
    coverage = len(cells(bone) & disc_cells) / max(len(disc_cells), 1)
    if coverage < MIN_COVERAGE:
        return (
            f"{L.level_name(disc)} touches {L.level_name(vertebra)} over {coverage:.0%} of its "
            f"core (at least {MIN_COVERAGE:.0%} needed)"
        )
    pts = np.concatenate([bone, soft])
    mid = pts.mean(0)
    # Height along the axis as a linear function of the in-plane position.
    uv = (pts - mid) @ inplane_axes
    h = (pts - mid) @ axis
    design = np.column_stack([uv, np.ones(len(pts))])
    coef, *_ = np.linalg.lstsq(design, h, rcond=None)
    normal = unit(axis - inplane_axes @ coef[:2])
    ref = canal if canal is not None else SUPERIOR
    normal = normal if normal @ ref >= 0 else -normal
    residual = float(np.sqrt(np.mean((h - design @ coef) ** 2)))
    if residual > MAX_RESIDUAL_MM:
        return f"{names}: the interface is not a plane ({residual:.1f} mm RMS from the fit)"
    off = math.degrees(math.acos(min(1.0, abs(float(normal @ ref)))))
    if canal is not None and off > MAX_OFF_CANAL_DEG:
        return f"{names}: fitted plane tilted {off:.0f} deg from the canal"
    ant = anterior_frame(normal)[0]
    lo, hi = np.percentile((pts - mid) @ ant, [2, 98])
    depth = float(hi - lo)
    step = grid_step(geom.affine, normal)
    tilt_step = math.degrees(math.atan(step / depth))
    if tilt_step > MAX_TILT_STEP_DEG:
        return (
            f"{names}: one {step:.1f} mm voxel across its {depth:.0f} mm depth is a "
            f"{tilt_step:.1f} deg tilt (at most {MAX_TILT_STEP_DEG:g} deg)"
        )
    return Endplate(centre=mid, normal=normal, half_width_mm=depth / 2)


def sagittal_tilt(normal: np.ndarray) -> float:
    """Degrees the normal leans anteriorly from superior, in the sagittal plane."""
    return math.degrees(math.atan2(normal[1], normal[2]))


def coronal_tilt(normal: np.ndarray) -> float:
    """Degrees the normal leans towards the patient's left (RAS +x) from superior."""
    return math.degrees(math.atan2(normal[0], normal[2]))


def cobb(geom: LabelGeometry) -> dict[str, object] | str:
    """Largest coronal tilt difference between two thoracic/lumbar vertebrae, with the pair,
    or why it is not given.

    A vertebra's tilt is the mean of the coronal tilts of its resolved endplates. Needs at
    least `COBB_MIN_VERTEBRAE` such vertebrae.
    """
    tilts: dict[int, float] = {}
    for v in COBB_VERTEBRAE:
        if v not in geom.boxes:
            continue
        discs = [d for d in geom.neighbours(v) if d in L.DISCS]
        plates = [p for p in (fit_endplate(geom, v, d) for d in discs) if isinstance(p, Endplate)]
        if plates:
            tilts[v] = float(np.mean([coronal_tilt(p.normal) for p in plates]))
    if len(tilts) < COBB_MIN_VERTEBRAE:
        return (
            f"{len(tilts)} thoracic or lumbar vertebrae with a resolved endplate "
            f"(at least {COBB_MIN_VERTEBRAE} needed)"
        )
    upper, lower = max(
        itertools.combinations(tilts, 2), key=lambda p: abs(tilts[p[0]] - tilts[p[1]])
    )
    return {
        "angle_deg": abs(tilts[upper] - tilts[lower]),
        "upper_end_vertebra": L.level_name(upper),
        "lower_end_vertebra": L.level_name(lower),
    }


def sagittal_angle(
    geom: LabelGeometry, name: str
) -> tuple[float | None, str | None, list[Endplate]]:
    """(degrees, None, both endplates) of one sagittal angle, or (None, reason, [])."""
    (v1, d1), (v2, d2), sign = SAGITTAL[name]
    plates = [fit_endplate(geom, v1, d1), fit_endplate(geom, v2, d2)]
    reasons = [p for p in plates if isinstance(p, str)]
    if reasons:
        return None, "; ".join(reasons), []
    upper, lower = (p for p in plates if isinstance(p, Endplate))
    return sign * (sagittal_tilt(lower.normal) - sagittal_tilt(upper.normal)), None, [upper, lower]


def alignment(geom: LabelGeometry, levels_trusted: bool) -> dict[str, object]:
    """Sagittal angles and the coronal Cobb estimate; None, with its reason in `reasons`,
    for what cannot be measured.

    `levels_trusted` is False when level names are relative only (no landmark, no localizer);
    every angle is then None, with a note saying why.
    """
    out: dict[str, object] = {name: None for name in SAGITTAL}
    out["coronal_cobb"] = None
    if not levels_trusted:
        out["note"] = "levels are relative only (no landmark or localizer): no angle given"
        return out
    reasons: dict[str, str] = {}
    for name in SAGITTAL:
        value, reason, _ = sagittal_angle(geom, name)
        out[name] = value
        if reason is not None:
            reasons[name] = reason
    found = cobb(geom)
    if isinstance(found, str):
        reasons["coronal_cobb"] = found
    else:
        out["coronal_cobb"] = found
    out["reasons"] = reasons
    return out


def drawn_angles(
    geom: LabelGeometry, data: dict[str, object]
) -> list[tuple[str, float, list[tuple[np.ndarray, np.ndarray, float]]]]:
    """(title, degrees, both fitted endplates as (centre, normal, half depth mm)) of each
    sagittal angle in `data` (an `alignment` result), for the curvature figure: the lines
    the angle came from."""
    out = []
    for name in SAGITTAL:
        value = data.get(name)
        if not isinstance(value, float):
            continue
        _, _, plates = sagittal_angle(geom, name)
        if plates:
            drawn = [(p.centre, p.normal, p.half_width_mm) for p in plates]
            out.append((TITLES[name], value, drawn))
    return out


def centroid_line(geom: LabelGeometry) -> list[np.ndarray]:
    """Disc centroids from top to bottom: the line of the vertebral body column."""
    return [geom.centroid(x) for x in SPINE_ORDER if x in L.DISCS and x in geom.boxes]
