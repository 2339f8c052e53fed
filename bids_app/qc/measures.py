"""Per-level morphometry of a final label image, in millimetres, whatever its grid.

Lengths are read off the label image rendered by nearest neighbour at `STEP` mm along lines in
world space: a voxel then counts as the box around its centre, which keeps each boundary
within half a voxel of the truth on average and makes the numbers independent of voxel
order, size and obliquity. Heights are means over a core bundle of lines parallel to the
local spine axis (a volume divided by a cross-section), so single-voxel noise averages out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import (
    LabelGeometry,
    anterior_frame,
    inside_grid,
    sample,
    unit,
    voxel_extent,
)

STEP = 0.25  # mm between samples along lines and in oblique planes
CSA_HALF_WIDTH = 25.0  # mm; half side of the square plane sampled around the canal centre
CSA_MAX_OFFSET = 5.0  # mm; the canal must be this close to the centreline point
# The cord shape ratio needs voxels this fine across the cord (AP and LR): a 10 mm wide cord
# over 3 mm slices is 3-4 voxels, and its ratio was off by up to 0.13 on phantoms.
CORD_RATIO_MAX_VOXEL_MM = 1.5


LEVEL_KINDS = frozenset({"vertebra", "disc"})


@dataclass(frozen=True)
class Column:
    """One column of the morphometry TSV, with its BIDS sidecar description.

    `structures` names the label kinds (cord, canal, vertebra, sacrum, disc) the measure
    applies to: the group's wide table has one column per label of those kinds, whatever
    the images hold, so a measure added here gets its fixed columns there.
    """

    name: str
    long_name: str
    description: str
    units: str | None = None
    structures: frozenset[str] = frozenset()


COLUMNS: tuple[Column, ...] = (
    Column("index", "Label index", "Label value in the final segmentation (seg-spine_dseg.tsv)."),
    Column("name", "Label name", "Label name from seg-spine_dseg.tsv."),
    Column("abbreviation", "Level", "Short level name (C2, T12-L1, SC, CANAL...)."),
    Column("structure", "Structure", "cord, canal, vertebra, sacrum or disc."),
    Column("voxels", "Voxel count", "Number of voxels carrying this label."),
    Column(
        "volume_mm3",
        "Volume",
        "Voxel count times voxel volume.",
        "mm^3",
        frozenset({"cord", "canal", "vertebra", "sacrum", "disc"}),
    ),
    Column(
        "n_components",
        "Connected components",
        "26-connected components of this label; 1 is expected.",
    ),
    Column(
        "fov_edge",
        "At the edge of the field of view",
        "1 when the label reaches the border of the image (its volume may be incomplete; "
        "lengths cut by the border are reported as n/a), else 0.",
    ),
    Column("centroid_x_mm", "Centroid x", "Scanner RAS x of the label centroid.", "mm"),
    Column("centroid_y_mm", "Centroid y", "Scanner RAS y of the label centroid.", "mm"),
    Column("centroid_z_mm", "Centroid z", "Scanner RAS z of the label centroid.", "mm"),
    Column(
        "disc_height_mm",
        "Disc height",
        "Mean extent of the disc along its axis (the normal of the disc plate from a principal "
        "component analysis; the canal centreline tangent at the disc's level when the disc is "
        "less than three voxels thick along that normal), over lines within a core of radius "
        "one quarter of the AP depth (the AP standard deviation) around the centroid.",
        "mm",
        structures=frozenset({"disc"}),
    ),
    Column(
        "disc_ap_depth_mm",
        "Disc antero-posterior depth",
        "Antero-posterior extent of the disc perpendicular to its axis through the centroid: "
        "median of 9 nearby parallel chords; for a disc less than three voxels thick, the AP "
        "extent of its whole mid-sagittal section (median of three sections 1 mm apart).",
        "mm",
        structures=frozenset({"disc"}),
    ),
    Column(
        "body_height_mm",
        "Vertebral body height",
        "Mean extent of the vertebra along the line joining the centroids of its two adjacent "
        "discs, over lines within a core of radius one quarter of the smaller disc's AP depth. "
        "Only for vertebrae with both adjacent discs segmented and the core inside the field of "
        "view; posterior elements are outside the core.",
        "mm",
        structures=frozenset({"vertebra"}),
    ),
    Column(
        "canal_csa_mm2",
        "Spinal canal cross-sectional area",
        "Area of canal plus cord in the plane perpendicular to the canal centreline, at the "
        "centreline point nearest to the disc centroid (disc rows) or to the vertebral "
        "mid-level (vertebra rows: midpoint of the adjacent disc centroids, else the vertebra "
        "centroid); sampled at 0.25 mm.",
        "mm^2",
        structures=LEVEL_KINDS,
    ),
    Column(
        "cord_csa_mm2",
        "Spinal cord cross-sectional area",
        "Area of the cord in the same plane as canal_csa_mm2 (0 below the cord's end). NOT "
        "VALIDATED: the TotalSpineSeg cord segmentation was not validated for CSA; use a "
        "dedicated cord tool for cord morphometry.",
        "mm^2",
        structures=LEVEL_KINDS,
    ),
    Column(
        "canal_ap_mm",
        "Spinal canal antero-posterior diameter",
        "Antero-posterior diameter of canal plus cord in the plane of canal_csa_mm2: the "
        "equivalent-ellipse diameter, four standard deviations of the section's area along "
        "the antero-posterior axis (the true diameter for an elliptic canal).",
        "mm",
        structures=LEVEL_KINDS,
    ),
    Column(
        "canal_ap_ratio",
        "Canal AP compression ratio",
        "Disc rows: canal_ap_mm at the disc divided by the mean canal_ap_mm of the two "
        "adjacent vertebrae (at their mid-levels); about 1 for an even canal, lower where the "
        "canal narrows at the disc. n/a without both adjacent vertebrae measured (L5-S: the "
        "sacrum is not a vertebra).",
        structures=frozenset({"disc"}),
    ),
    Column(
        "canal_csa_ratio",
        "Canal area compression ratio",
        "Disc rows: canal_csa_mm2 at the disc divided by the mean canal_csa_mm2 of the two "
        "adjacent vertebrae (at their mid-levels), as canal_ap_ratio.",
        structures=frozenset({"disc"}),
    ),
    Column(
        "cord_ap_lr_ratio",
        "Cord AP / transverse ratio",
        "Antero-posterior diameter of the cord divided by its left-right diameter, in the "
        "plane of canal_csa_mm2 (equivalent-ellipse diameters, as canal_ap_mm; a flattened "
        "cord gives a low ratio). n/a without cord there, or with voxels over 1.5 mm across "
        "the cord (thick sagittal or axial slices). NOT VALIDATED, as cord_csa_mm2.",
        structures=LEVEL_KINDS,
    ),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
MEASURE_COLUMNS: tuple[str, ...] = (
    "volume_mm3",
    "disc_height_mm",
    "disc_ap_depth_mm",
    "body_height_mm",
    "canal_csa_mm2",
    "cord_csa_mm2",
    "canal_ap_mm",
    "canal_ap_ratio",
    "canal_csa_ratio",
    "cord_ap_lr_ratio",
)
SECTION_COLUMNS: tuple[str, ...] = (
    "canal_csa_mm2",
    "cord_csa_mm2",
    "canal_ap_mm",
    "cord_ap_lr_ratio",
)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}


def number(value: object) -> float:
    """A morphometry value (as computed, or parsed from a TSV cell) as a float; NaN for 'n/a',
    text or anything else not numeric."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def sidecar() -> dict[str, dict[str, str]]:
    """BIDS column descriptions of the morphometry TSV."""
    out: dict[str, dict[str, str]] = {}
    for col in COLUMNS:
        entry = {"LongName": col.long_name, "Description": col.description}
        if col.units:
            entry["Units"] = col.units
        out[col.name] = entry
    return out


def _line_hits(
    geom: LabelGeometry, label: int, origins: np.ndarray, direction: np.ndarray, t1: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which samples along lines origin + t * direction (t in [0, t1], STEP apart) are `label`.

    Returns (hits, inside): boolean arrays (n_lines, n_samples), `inside` telling which samples
    fall within the field of view.
    """
    t = np.arange(STEP / 2, t1, STEP)
    pts = origins[:, None, :] + t[None, :, None] * direction
    hits = sample(geom.data, geom.affine, pts, order=0) == label
    return hits, inside_grid(geom.data.shape, geom.affine, pts)


def _run_length(hits: np.ndarray) -> np.ndarray:
    """Per line, the labelled length (mm): the sum of its labelled samples."""
    return hits.sum(1) * STEP


def _extent(hits: np.ndarray) -> np.ndarray:
    """Per line, first to last labelled sample (mm), so gaps of thick slices do not count."""
    any_hit = hits.any(1)
    first = np.argmax(hits, axis=1)
    last = hits.shape[1] - 1 - np.argmax(hits[:, ::-1], axis=1)
    return np.where(any_hit, (last - first + 1) * STEP, 0.0)


def _disc_origins(centre: np.ndarray, e1: np.ndarray, e2: np.ndarray, radius: float) -> np.ndarray:
    """Line origins 0.5 mm apart filling a disc of `radius` around `centre` in plane (e1, e2)."""
    r = max(radius, 0.5)
    g = np.arange(-r, r + 1e-9, 0.5)
    a, b = np.meshgrid(g, g, indexing="ij")
    keep = a**2 + b**2 <= r**2
    return centre + a[keep][:, None] * e1 + b[keep][:, None] * e2


def _half_extent(points: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> float:
    return float(np.abs((points - centre) @ direction).max())


def _core_radius(pts: np.ndarray, centre: np.ndarray, ant: np.ndarray) -> float:
    """Core bundle radius: the AP standard deviation, a quarter of an elliptic disc's depth."""
    return math.sqrt(float(np.var((pts - centre) @ ant)))


def disc_size(geom: LabelGeometry, label: int) -> tuple[float, float]:
    """(height, AP depth) of a disc in mm; NaN when its axis cannot be found or it is cut.

    The depth is the median AP chord of nine lines through the centre of a resolved disc. A
    disc less than three voxels thick (thick slices) is spread over one or two slices that
    a single line crosses only in part, so its depth is the AP extent of its whole
    mid-sagittal section projected along the axis instead (median of three sections 1 mm
    apart).
    """
    axis, resolved = geom.disc_frame(label)
    if axis is None:
        return math.nan, math.nan
    pts, c = geom.coords(label), geom.centroid(label)
    ant, right = anterior_frame(axis)
    pad = 2 * max(voxel_extent(geom.affine, axis), voxel_extent(geom.affine, ant)) + 2.0
    reach_a = _half_extent(pts, c, ant) + pad
    reach_n = _half_extent(pts, c, axis) + pad
    if resolved:
        thick = math.sqrt(12 * float(np.var((pts - c) @ axis)))
        rows = [(w, np.array([t])) for w in (-1.0, 0.0, 1.0) for t in (-thick / 4, 0, thick / 4)]
    else:
        rows = [(w, np.arange(-reach_n, reach_n + 1e-9, 0.5)) for w in (-1.0, 0.0, 1.0)]
    depths = []
    for w, offsets in rows:
        origins = c + w * right + offsets[:, None] * axis - reach_a * ant
        hits = _line_hits(geom, label, origins, ant, 2 * reach_a)[0]
        depths.append(float(_extent(np.asarray(hits.any(0))[None])[0]))
    depth = math.nan if geom.touches_edge(label, ant) else float(np.median(depths))
    if geom.touches_edge(label, axis):
        return math.nan, depth
    core = _disc_origins(c - reach_n * axis, ant, right, _core_radius(pts, c, ant))
    height = float(_run_length(_line_hits(geom, label, core, axis, 2 * reach_n)[0]).mean())
    return height, depth


def body_height(geom: LabelGeometry, label: int) -> float:
    """Vertebral body height (mm) between the centroids of its two adjacent discs, or NaN."""
    above, below = geom.neighbours(label)
    if above not in L.DISCS or below not in L.DISCS:
        return math.nan
    radii = []
    for disc in (above, below):
        axis = geom.disc_axis(disc)
        if axis is None:
            return math.nan
        radii.append(_core_radius(geom.coords(disc), geom.centroid(disc), anterior_frame(axis)[0]))
    radius = min(radii)
    c_top, c_bot = geom.centroid(above), geom.centroid(below)
    length = float(np.linalg.norm(c_top - c_bot))
    axis = unit(c_top - c_bot)
    ant, right = anterior_frame(axis)
    core = _disc_origins(c_bot, ant, right, radius)
    hits, inside = _line_hits(geom, label, core, axis, length)
    if not inside.all():  # the image cuts the body: its height would be too short
        return math.nan
    return float(_run_length(hits).mean())


def _diameter_mm(mask: np.ndarray, axis: int) -> float:
    """Equivalent-ellipse diameter (mm) of a section along rows (axis 0, AP) or columns (1, LR).

    Four standard deviations of the area along that axis: the diameter of an ellipse with
    the same second moment. Every sample counts, so the voxel staircase averages out where
    a first-to-last extent would be off by up to a voxel.
    """
    pos = np.nonzero(mask)[axis]
    if pos.size < 2:
        return math.nan
    return 4.0 * math.sqrt(float(np.var(pos)) + 1 / 12) * STEP


def cross_sections(geom: LabelGeometry, point: np.ndarray) -> dict[str, float]:
    """Canal and cord sizes perpendicular to the canal at the level of `point`.

    Keys are SECTION_COLUMNS: canal area (cord included) and cord area in mm^2, canal AP
    diameter in mm and the cord's AP / left-right ratio. All NaN when the level is beyond
    the canal's ends, the canal is not found near the centreline there, or the plane does
    not contain it whole.
    """
    missing = dict.fromkeys(SECTION_COLUMNS, math.nan)
    cl = geom.centreline
    if cl is None:
        return missing
    i = cl.nearest(point)
    if not cl.is_interior(i):
        return missing
    centre, tangent = cl.points[i], cl.tangents[i]
    ant, right = anterior_frame(tangent)
    offs = np.arange(-CSA_HALF_WIDTH + STEP / 2, CSA_HALF_WIDTH, STEP)
    plane = centre + offs[:, None, None] * ant + offs[None, :, None] * right
    lab = sample(geom.data, geom.affine, plane, order=0)
    canal = (lab == L.CANAL) | (lab == L.CORD)
    comps, n = ndimage.label(canal, structure=np.ones((3, 3)))
    if n == 0:
        return missing
    rr, cc = np.nonzero(canal)
    mid = (offs.size - 1) / 2
    dist2 = (rr - mid) ** 2 + (cc - mid) ** 2
    k = int(np.argmin(dist2))
    if math.sqrt(dist2[k]) * STEP > CSA_MAX_OFFSET:
        return missing
    comp = comps == comps[rr[k], cc[k]]
    if comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any():
        return missing
    cord = comp & (lab == L.CORD)
    has_cord = L.CORD in geom.boxes
    steps = np.abs(geom.affine[:3, :3].T @ np.stack([ant, right], 1)).max(0)  # voxel, AP and LR
    fine = bool((steps <= CORD_RATIO_MAX_VOXEL_MM).all())
    return {
        "canal_csa_mm2": float(comp.sum()) * STEP**2,
        "cord_csa_mm2": float(cord.sum()) * STEP**2 if has_cord else math.nan,
        "canal_ap_mm": _diameter_mm(comp, 0),
        "cord_ap_lr_ratio": _diameter_mm(cord, 0) / _diameter_mm(cord, 1) if fine else math.nan,
    }


def compression_ratios(rows: list[dict[str, object]], geom: LabelGeometry) -> None:
    """Fill each disc row's canal_ap_ratio and canal_csa_ratio from its two vertebrae's rows.

    A narrowing at a disc shows against the canal just above and below it, whatever the
    canal's size at that level of the spine (it widens in the neck and the lumbar spine).
    """
    by_index = {r["index"]: r for r in rows}
    for row in rows:
        row["canal_ap_ratio"] = row["canal_csa_ratio"] = math.nan
        if row["index"] not in L.DISCS:
            continue
        above, below = (by_index.get(v) for v in geom.neighbours(int(number(row["index"]))))
        if (
            above is None
            or below is None
            or {above["structure"], below["structure"]} != {"vertebra"}
        ):
            continue
        for ratio, col in (("canal_ap_ratio", "canal_ap_mm"), ("canal_csa_ratio", "canal_csa_mm2")):
            reference = (number(above[col]) + number(below[col])) / 2
            if reference > 0:  # NaN compares False
                row[ratio] = number(row[col]) / reference


def _level_point(geom: LabelGeometry, label: int) -> np.ndarray:
    """Where a row's cross-sections are taken: the disc centroid, or the vertebral mid-level."""
    if label in L.DISCS:
        return geom.centroid(label)
    above, below = geom.neighbours(label)
    if above in L.DISCS and below in L.DISCS:
        return (geom.centroid(above) + geom.centroid(below)) / 2
    return geom.centroid(label)


def measure(geom: LabelGeometry) -> list[dict[str, object]]:
    """One row per label present (label table order); NaN where a measure does not apply."""
    rows: list[dict[str, object]] = []
    discs = {label: disc_size(geom, label) for label in geom.present if label in L.DISCS}
    comps = geom.component_sizes
    for lab in L.FINAL_LABELS:
        if lab.index not in geom.boxes:
            continue
        centroid = geom.centroid(lab.index)
        row: dict[str, object] = {
            "index": lab.index,
            "name": lab.name,
            "abbreviation": lab.abbreviation,
            "structure": lab.kind,
            "voxels": geom.count(lab.index),
            "volume_mm3": geom.count(lab.index) * geom.voxel_volume,
            "n_components": len(comps.get(lab.index, ())),
            "fov_edge": int(geom.touches_edge(lab.index)),
            "centroid_x_mm": float(centroid[0]),
            "centroid_y_mm": float(centroid[1]),
            "centroid_z_mm": float(centroid[2]),
            "disc_height_mm": discs.get(lab.index, (math.nan,))[0],
            "disc_ap_depth_mm": discs.get(lab.index, (math.nan, math.nan))[1],
            "body_height_mm": (
                body_height(geom, lab.index) if lab.kind == "vertebra" else math.nan
            ),
        }
        if lab.kind in ("vertebra", "disc"):
            row.update(cross_sections(geom, _level_point(geom, lab.index)))
        else:
            row.update(dict.fromkeys(SECTION_COLUMNS, math.nan))
        rows.append(row)
    compression_ratios(rows, geom)
    return rows
