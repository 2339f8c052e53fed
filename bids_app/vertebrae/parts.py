"""Subregions of every vertebra, cut from the final labels, its discs and the spinal canal.

Ids are SPINEPS's (its label table is TPTBox's `Location`, github.com/Hendrik-code/TPTBox,
TPTBox/core/vert_constants.py; Möller et al., Eur Radiol 2024): 41 arcus vertebrae, 42
spinous process, 43/44 costal (transverse) processes left/right, 49 vertebral body (SPINEPS's
"corpus border", the body it measures), 52/53 superior/inferior endplates. SPINEPS's
articular processes (45-48) are not cut: nothing in the labels or the phantoms tells them
from the arcus.

How each part is cut, in the vertebra's local column frame (`Frame`: axis along the column,
see `frame_of`; anterior = patient anterior perpendicular to it):
- body: the vertebra's voxels whose projection along the axis falls inside the footprint of
  one of its adjacent discs' contact with it, or in front of it (discs cover the endplates;
  pedicles and arch lie behind and beside them), each footprint moved with the column's
  curve (its centre interpolated between the contacts). Only the footprint's posterior
  edge cuts: the body's front and sides are the label's own (a network's discs are often
  narrower than its bodies). Then opened by a 1 mm ball (a thin plate of arch under a
  footprint's edge is not body) and closed by it within the vertebra (no slit where two
  footprints miss each other);
- endplates: body voxels within `ENDPLATE_MM` of the body's superior / inferior surface
  along the axis (the sacrum: its superior endplate only);
- spinous process: the rest, more than `ARCH_MM` behind the canal's posterior wall;
- costal processes: the rest, more than `ARCH_MM` lateral to the canal's side walls
  (patient left 43, right 44);
- arcus: everything else (pedicles, laminae, articular processes). C1 is arcus throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import (
    SUPERIOR,
    LabelGeometry,
    anterior_frame,
    plate_normal,
    sample,
    unit,
    voxel_extent,
)

PARTS: dict[str, int] = {
    "arcus": 41,
    "spinous": 42,
    "costal_left": 43,
    "costal_right": 44,
    "body": 49,
    "endplate_superior": 52,
    "endplate_inferior": 53,
}
PART_NAMES: dict[int, tuple[str, str]] = {  # id -> (name, abbreviation) for the label TSV
    41: ("Arcus vertebrae (pedicles, laminae, articular processes)", "ARCUS"),
    42: ("Spinous process", "SPIN"),
    43: ("Costal (transverse) process, left", "COSTL"),
    44: ("Costal (transverse) process, right", "COSTR"),
    49: ("Vertebral body", "BODY"),
    52: ("Superior endplate", "EPSUP"),
    53: ("Inferior endplate", "EPINF"),
}
BODY_PARTS = (49, 52, 53)
POSTERIOR_PARTS = (41, 42, 43, 44)
ENDPLATE_MM = 2.0
ARCH_MM = 5.0  # laminae and pedicles: adult ones are 4-7 mm thick
GRID_MM = 0.5  # footprint raster
AXIS_AGREE_DEG = 5.0
OPENING_MM = 1.0
# A contact point further from the vertebra than its neighbours (within LOCAL_MM) by more
# than this touches arch hanging into a sheared disc, not the endplate.
BEYOND_MM = 0.75
LOCAL_MM = 3.0
# A disc's footprint is widened by this much left and right before it cuts: a network labels
# its discs narrower than its bodies, and a footprint of voxel centres is narrower than the
# body even on exact labels (the pedicles join the body behind its posterior edge).
SIDE_MM = 3.0


@dataclass(frozen=True)
class Frame:
    """Local column frame of one vertebra, in world RAS mm."""

    origin: np.ndarray
    axis: np.ndarray  # superior
    ant: np.ndarray
    right: np.ndarray

    def coords(self, world: np.ndarray) -> np.ndarray:
        """(a, l, h) of world points (n, 3): anterior, right, superior of the origin (mm)."""
        d = world - self.origin
        return np.stack([d @ self.ant, d @ self.right, d @ self.axis], 1)

    def world(self, a: np.ndarray, lr: np.ndarray, h: np.ndarray) -> np.ndarray:
        """World points (..., 3) of frame coordinates."""
        return (
            self.origin
            + np.asarray(a)[..., None] * self.ant
            + np.asarray(lr)[..., None] * self.right
            + np.asarray(h)[..., None] * self.axis
        )


def adjacent_discs(geom: LabelGeometry, label: int) -> tuple[int | None, int | None]:
    """The discs directly above and below a vertebra (or the sacrum) in the labels, if any."""
    above, below = geom.neighbours(label)
    return (above if above in L.DISCS else None), (below if below in L.DISCS else None)


def frame_of(geom: LabelGeometry, label: int) -> Frame:
    """The vertebra's frame. Its axis: the mean normal of its two endplates (the plane of
    each disc's contact with it, `contact`) when they agree within `AXIS_AGREE_DEG`;
    else the endplate normal nearest the canal's tangent (a wedge tilts one endplate, the
    other stays); else the canal's tangent; else world S-I. The discs' own planes are not
    used: a slipped disc is sheared, a disc filling a sunk endplate is wedged, and the canal
    bends at a slip."""
    centre = geom.centroid(label)
    tangent = geom.spine_axis_near(centre)
    normals = []
    for disc in adjacent_discs(geom, label):
        if disc is None or (axis0 := geom.disc_axis(disc)) is None:
            continue
        normal = plate_normal(contact(geom, axis0, centre, disc, label), flatness=0.3)
        if normal is not None:
            normals.append(normal)
    agree = math.cos(math.radians(AXIS_AGREE_DEG))
    if len(normals) == 2 and normals[0] @ normals[1] >= agree:
        axis = unit(normals[0] + normals[1])
    elif normals and tangent is not None:
        axis = max(normals, key=lambda n: float(n @ tangent))
    elif normals:
        axis = normals[0]
    else:
        axis = tangent if tangent is not None else SUPERIOR
    ant, right = anterior_frame(axis)
    return Frame(centre, axis, ant, right)


def contact(
    geom: LabelGeometry, axis: np.ndarray, centre: np.ndarray, disc: int, vertebra: int
) -> np.ndarray:
    """World points (n, 3) of the disc's voxels that touch the vertebra (centred at `centre`)
    along `axis`: the endplate the body shows the disc. A slipped disc is sheared; its
    contact with each body stays under that body. All the disc's voxels when fewer than 10
    touch."""
    pts = geom.coords(disc)
    h = (pts - centre) @ axis
    toward = -1.0 if h.mean() > 0 else 1.0
    extent = voxel_extent(geom.affine, axis)
    reach = extent + GRID_MM
    steps = np.arange(GRID_MM, reach + 1e-6, GRID_MM)
    probe = pts[:, None, :] + toward * steps[None, :, None] * axis
    touch = (sample(geom.data, geom.affine, probe, order=0) == vertebra).any(1)
    if touch.sum() < 10:
        return pts
    plate = _on_plane(pts[touch], axis, max(1.5, reach))
    return _first_layer(plate, axis, toward, max(BEYOND_MM, extent / 2 + GRID_MM / 2))


def _first_layer(pts: np.ndarray, axis: np.ndarray, toward: float, tol: float) -> np.ndarray:
    """The contact points (n, 3) not lying more than `tol` mm further from the vertebra
    (`toward`: +1 when it is superior along `axis`) than the median of their neighbours
    within LOCAL_MM. Under a slip the disc is sheared and the arch of the body above hangs
    into it: the disc's sloping posterior edge touches that arch below the endplate, and
    would push the footprint (the body's posterior wall) back by a share of the slip. A
    dish or a wedge sinks points toward the vertebra and keeps them; the neighbourhood
    follows a blocky label's steps."""
    ant, right = anterior_frame(axis)
    design = np.column_stack([pts @ ant, pts @ right, np.ones(len(pts))])
    coef, *_ = np.linalg.lstsq(design, pts @ axis, rcond=None)
    toward_mm = (pts @ axis - design @ coef) * toward
    near = cKDTree(design[:, :2]).query_ball_point(design[:, :2], LOCAL_MM)
    width = max(len(i) for i in near)
    padded = np.full((len(pts), width), np.nan)
    for row, i in enumerate(near):
        padded[row, : len(i)] = toward_mm[i]
    local = np.nanmedian(padded, axis=1)
    keep = toward_mm >= local - tol
    return pts[keep] if keep.sum() >= 10 else pts


def _on_plane(pts: np.ndarray, axis: np.ndarray, tol: float) -> np.ndarray:
    """The points within `tol` mm (along `axis`) of the plane fitted to them, fitted twice:
    under a slip the arch hanging down behind a sheared disc touches it far below the body's
    end. (A dish leaves a hole in the rest, which the footprint fills.)"""
    ant, right = anterior_frame(axis)
    design = np.column_stack([pts @ ant, pts @ right, np.ones(len(pts))])
    h = pts @ axis
    keep = np.ones(len(pts), bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], h[keep], rcond=None)
        new = np.abs(h - design @ coef) <= tol
        if new.sum() < 10:
            break
        keep = new
    return pts[keep]


def _footprint(
    geom: LabelGeometry, frame: Frame, pts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, lower corner, shape): the projection of world points along the axis on a
    GRID_MM raster, closed by a voxel's box (so thick slices leave no gaps) but not grown
    (a body's voxel is in when its centre is), holes filled."""
    al = frame.coords(pts)[:, :2]
    half = (
        np.array([voxel_extent(geom.affine, frame.ant), voxel_extent(geom.affine, frame.right)]) / 2
    )
    lo = al.min(0) - half - 2 * GRID_MM
    hi = al.max(0) + half + 2 * GRID_MM
    shape = np.ceil((hi - lo) / GRID_MM).astype(int)
    mask = np.zeros(shape, bool)
    idx = np.floor((al - lo) / GRID_MM).astype(int)
    mask[idx[:, 0], idx[:, 1]] = True
    size = np.maximum(1, np.round(2 * half / GRID_MM).astype(int))
    mask = ndimage.binary_closing(mask, np.ones(size + 1, bool))
    mask = ndimage.binary_fill_holes(mask)
    return mask, lo, shape


def in_footprint(
    geom: LabelGeometry, frame: Frame, vertebra: int, discs: list[int], points: np.ndarray
) -> np.ndarray:
    """Which world points (n, 3) project along the frame's axis inside the footprint of a
    disc's contact with the vertebra, or in front of it.

    Only the footprint's posterior edge cuts: a point is in when the footprint, widened by
    SIDE_MM left and right, has a cell behind it at its left-right position (beyond the
    footprint's sides: at the nearest side column). The body's front and sides are the
    label's own: a network labels its discs narrower than its bodies, and nothing of the
    arch lies in front of the posterior wall.

    The column is curved: each point is first moved by the AP and lateral offset of the
    contacts' centres interpolated at its height, so that a footprint is laid under the body
    where the body is, not where the disc is.
    """
    alh = frame.coords(points)
    contacts = [contact(geom, frame.axis, frame.origin, d, vertebra) for d in discs]
    centres = np.array([frame.coords(c).mean(0) for c in contacts])
    order = np.argsort(centres[:, 2])
    drift = np.stack(
        [np.interp(alh[:, 2], centres[order, 2], centres[order, k]) for k in (0, 1)], 1
    )
    inside = np.zeros(len(points), bool)
    for pts, centre in zip(contacts, centres, strict=True):
        mask, lo, shape = _footprint(geom, frame, pts)
        # Widened left and right by SIDE_MM (a row of cells, not a ball: the posterior edge
        # stays), then every cell in front of the footprint's posterior edge.
        side = round(SIDE_MM / GRID_MM)
        mask = np.pad(mask, ((0, 0), (side, side)))
        mask = ndimage.binary_dilation(mask, np.ones((1, 2 * side + 1), bool))
        lo = lo - np.array([0.0, side * GRID_MM])
        shape = np.array(mask.shape)
        ahead = np.maximum.accumulate(mask, axis=0)
        cols = np.flatnonzero(mask.any(0))
        idx = np.floor((alh[:, :2] - drift + centre[:2] - lo) / GRID_MM).astype(int)
        idx[:, 0] = np.minimum(idx[:, 0], shape[0] - 1)
        idx[:, 1] = np.clip(idx[:, 1], cols.min(), cols.max())
        ok = idx[:, 0] >= 0
        hit = np.zeros(len(points), bool)
        hit[ok] = ahead[idx[ok, 0], idx[ok, 1]]
        inside |= hit
    return inside


@dataclass(frozen=True)
class Canal:
    """The canal's section at a vertebra's mid-height, in its frame (mm)."""

    front: float  # a of the anterior wall
    back: float  # a of the posterior wall
    centre_l: float
    half_width: float


def canal_at(geom: LabelGeometry, frame: Frame, half_height: float) -> Canal | None:
    """Canal (and cord) walls within `half_height` of the frame's origin along its axis."""
    pts = [geom.coords(x) for x in (L.CANAL, L.CORD) if x in geom.boxes]
    if not pts:
        return None
    alh = frame.coords(np.concatenate(pts))
    near = alh[np.abs(alh[:, 2]) < half_height]
    if len(near) < 10:
        return None
    a, l_ = near[:, 0], near[:, 1]
    centre = float(np.median(l_))
    return Canal(
        front=float(np.percentile(a, 98)),
        back=float(np.percentile(a, 2)),
        centre_l=centre,
        half_width=float(np.percentile(np.abs(l_ - centre), 98)),
    )


def vertebra_parts(geom: LabelGeometry, label: int, frame: Frame) -> np.ndarray:
    """Part id of every voxel of one vertebra (or the sacrum), in `geom.voxel_indices` order."""
    pts = geom.coords(label)
    part = np.full(len(pts), PARTS["arcus"], np.uint8)
    if label == 11:  # C1: a ring without a body
        return part
    discs = [d for d in adjacent_discs(geom, label) if d is not None]
    alh = frame.coords(pts)
    canal = canal_at(geom, frame, 3.0)
    if discs:
        body = in_footprint(geom, frame, label, discs, pts)
    elif canal is not None:
        body = alh[:, 0] > canal.front
    else:
        body = np.zeros(len(pts), bool)
    if canal is not None and label != L.SACRUM:
        behind = alh[:, 0] < canal.back - ARCH_MM
        lateral = np.abs(alh[:, 1] - canal.centre_l) > canal.half_width + ARCH_MM
        part[behind & ~body] = PARTS["spinous"]
        side = lateral & ~behind & ~body
        part[side & (alh[:, 1] < canal.centre_l)] = PARTS["costal_left"]
        part[side & (alh[:, 1] > canal.centre_l)] = PARTS["costal_right"]
    part[body] = PARTS["body"]
    return part


def _endplates(geom: LabelGeometry, body_of: np.ndarray, parts: np.ndarray, frames: dict) -> None:
    """Mark body voxels within ENDPLATE_MM of their body's superior / inferior surface."""
    steps = np.arange(GRID_MM, ENDPLATE_MM + 1e-6, GRID_MM)
    for label, frame in frames.items():
        ijk = np.argwhere(body_of == label)
        if not len(ijk):
            continue
        world = ijk @ geom.affine[:3, :3].T + geom.affine[:3, 3]
        for sign, pid in ((1, PARTS["endplate_superior"]), (-1, PARTS["endplate_inferior"])):
            if (sign < 0 and label == L.SACRUM) or (sign > 0 and label == 12):
                continue  # S1: superior endplate only; C2: the dens has none
            pts = world[:, None, :] + sign * steps[None, :, None] * frame.axis
            edge = (sample(body_of, geom.affine, pts, order=0) != label).any(1)
            hit = ijk[edge]
            parts[hit[:, 0], hit[:, 1], hit[:, 2]] = pid


def _smoothed(geom: LabelGeometry, ijk: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The body (a mask over the vertebra's voxels `ijk`) opened by a ball of OPENING_MM (a
    plate of arch under the edge of a disc's footprint is not body), then closed by it
    within the vertebra (two footprints that miss each other by a raster cell leave a slit
    through the body). Axes with voxels over twice OPENING_MM are left alone."""
    radii = np.floor(OPENING_MM / geom.zooms + 1e-6).astype(int)
    if not radii.any() or not body.any():
        return body
    lo = ijk.min(0) - radii - 1
    shape = ijk.max(0) - lo + radii + 2
    rel = ijk - lo
    sub = np.zeros(shape, bool)
    sub[rel[body, 0], rel[body, 1], rel[body, 2]] = True
    g = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    ball = sum((x / max(r, 1)) ** 2 for x, r in zip(g, radii, strict=True)) <= 1
    sub = ndimage.binary_closing(ndimage.binary_opening(sub, ball), ball)
    return sub[rel[:, 0], rel[:, 1], rel[:, 2]]


def split(geom: LabelGeometry) -> tuple[np.ndarray, dict[int, Frame]]:
    """Part ids (uint8, on the label image's grid; 0 outside the vertebrae and sacrum) and
    the frame of each vertebra."""
    parts = np.zeros(geom.data.shape, np.uint8)
    body_of = np.zeros(geom.data.shape, np.uint8)
    frames: dict[int, Frame] = {}
    for label in geom.present:
        if not (L.is_vertebra(label) or label == L.SACRUM):
            continue
        frame = frame_of(geom, label)
        frames[label] = frame
        ijk = geom.voxel_indices(label)
        part = vertebra_parts(geom, label, frame)
        body = _smoothed(geom, ijk, part == PARTS["body"])
        part[(part == PARTS["body"]) & ~body] = PARTS["arcus"]
        part[body] = PARTS["body"]
        parts[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = part
        body = ijk[part == PARTS["body"]]
        body_of[body[:, 0], body[:, 1], body[:, 2]] = label
    _endplates(geom, body_of, parts, frames)
    return parts, frames


def body_labels(geom: LabelGeometry, parts: np.ndarray) -> np.ndarray:
    """The final labels restricted to the bodies (endplates included), on the same grid."""
    return np.where(np.isin(parts, BODY_PARTS), geom.data, 0).astype(np.uint8)


def thick(geom: LabelGeometry, frame: Frame, limit: float) -> float | None:
    """The voxel's extent (mm) along the axis or anterior direction when above `limit`."""
    worst = max(voxel_extent(geom.affine, frame.axis), voxel_extent(geom.affine, frame.ant))
    return worst if worst > limit else None
