"""Body heights, Genant grade per vertebra and listhesis per disc, read on mid-sagittal
sections of the bodies cut by `bids_app.vertebrae.parts`.

A body's section is the plane through its frame's axis and anterior direction, at the
median left-right position of its body voxels, sampled at `STEP` mm by nearest neighbour
(so voxel order, size and obliquity do not matter); three parallel sections 1 mm apart
are read and their medians kept. With the source image, each section's body is first
trimmed where the image shows the disc beyond an end (`bids_app.vertebrae.endplates`: a
fracture the labels drew whole). On a section:
- the posterior wall is the median first body sample of the middle 60 % of the rows, the
  anterior wall the 90th percentile of the rows' last ones, the depth their distance;
- the posterior, middle and anterior heights are the body's extent along the axis at the
  AP shares `HEIGHT_SHARES` of the depth from the posterior wall (mean over the columns
  within `HEIGHT_WINDOW_MM`);
- the posterior-superior / posterior-inferior corner is the posterior wall at the body's
  top / bottom where the posterior height is read. That wall is the bone's boundary with
  what lies behind it (the canal) on the middle rows, a line fitted to it: the vertebra's
  own label, not the cut body, whose posterior edge comes from the discs and is pulled by
  a share of the slip where a slipped disc is sheared. The lower endplate's depth for the slip
  percentage is the lower body's depth (the sacrum: the median AP width of its rows 1 to
  `CORNER_MM` mm below its top).

A vertebra is n/a, with its reason, when it has no body (C1), when the dens makes the body
height meaningless (C2), when it may be transitional, when the voxels are thicker than
`MAX_VOXEL_MM` along the axis or the AP direction, or when the body is not seen whole (a disc
next to it missing, or the field of view cutting it). Listhesis needs the two bodies'
sections (the sacrum: its superior endplate only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import (
    SPINE_ORDER,
    LabelGeometry,
    inside_grid,
    sample,
)
from bids_app.vertebrae.endplates import trim_to_image
from bids_app.vertebrae.grades import HEIGHT_SHARES, genant, meyerding
from bids_app.vertebrae.parts import Frame, adjacent_discs, body_labels, thick

STEP = 0.25
SECTION_OFFSETS = (-1.0, 0.0, 1.0)  # mm from the mid-sagittal plane
MAX_VOXEL_MM = 1.5
CORNER_MM = 8.0  # the sacrum's endplate depth: rows 1 mm to this far from its top
S1_MM = 20.0  # the sacrum's section: its top this far along the axis (S1)
MARGIN_MM = 3.0  # section margin around the body
HEIGHT_WINDOW_MM = 1.0  # heights are means over the columns this close to their position
WALL_REACH_MM = 6.0  # how far the bone may run behind the body before the canal (a row
# whose bone runs further, into the arch, shows no posterior wall)
WALL_FIT_MM = 1.0  # rows this far off the fitted wall are refitted without
# The source image (data, affine: world mm), any grid: where the endplates are read.
Intensities = tuple[np.ndarray, np.ndarray]


@dataclass
class Section:
    """Mid-sagittal sections of one body in its frame: `mask[k, i, j]` is body at section k
    (left-right offset SECTION_OFFSETS[k] from `l0`), height `h[i]` (superior first) and AP
    position `a[j]` (posterior first); `bone` the same for the whole vertebra's label."""

    label: int
    frame: Frame
    l0: float
    a: np.ndarray
    h: np.ndarray
    mask: np.ndarray
    bone: np.ndarray

    def _rows(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, first a, last a) of the rows of section k that hold body."""
        rows = np.flatnonzero(self.mask[k].any(1))
        m = self.mask[k][rows]
        first = self.a[np.argmax(m, 1)]
        last = self.a[m.shape[1] - 1 - np.argmax(m[:, ::-1], 1)]
        return rows, first, last

    def walls(self, k: int) -> tuple[float, float] | None:
        """(posterior, anterior) wall positions (a, mm) on section k: the median first body
        sample of the middle 60 % of the rows (arch under the body's ends stays out), the
        90th percentile of the rows' last ones (a wedge shortens the upper rows)."""
        rows, first, last = self._rows(k)
        if rows.size < 5:
            return None
        n = rows.size
        middle = first[int(0.2 * n) : max(int(0.8 * n), int(0.2 * n) + 1)]
        return float(np.median(middle)), float(np.percentile(last, 90))

    def _columns(self, a_pos: float) -> np.ndarray:
        return np.flatnonzero(np.abs(self.a - a_pos) <= HEIGHT_WINDOW_MM)

    def height_at(self, k: int, a_pos: float) -> float:
        """Extent (mm) of the body along the axis at AP position a_pos on section k."""
        out = []
        for j in self._columns(a_pos):
            rows = np.flatnonzero(self.mask[k][:, j])
            if rows.size:
                out.append((rows[-1] - rows[0] + 1) * STEP)
        return float(np.mean(out)) if out else math.nan

    def end_at(self, k: int, a_pos: float, top: bool) -> float:
        """Height h (mm) of the body's superior (top) or inferior end at AP position a_pos."""
        out = []
        for j in self._columns(a_pos):
            rows = np.flatnonzero(self.mask[k][:, j])
            if rows.size:
                out.append(self.h[rows[0]] + STEP / 2 if top else self.h[rows[-1]] - STEP / 2)
        return float(np.mean(out)) if out else math.nan

    def endplate_depth(self, k: int, top: bool) -> float:
        """Median AP width of the body rows 1 to `CORNER_MM` mm from its top or bottom."""
        rows, first, last = self._rows(k)
        if rows.size == 0:
            return math.nan
        dist = np.abs(rows - (rows[0] if top else rows[-1])) * STEP
        near = (dist >= 1.0) & (dist <= CORNER_MM)
        return float(np.median(last[near] - first[near]) + STEP) if near.any() else math.nan

    def _posterior_wall(self, k: int) -> tuple[float, float] | None:
        """(slope, intercept) of the posterior wall on section k, a = slope * h + intercept:
        on each of the middle 60 % of the rows, the bone's boundary behind the body's first
        sample (where the vertebra's label ends: the canal), a line fitted to them and
        refitted without the rows more than WALL_FIT_MM off it (a plate of arch at the
        body's end). Rows whose bone runs on more than WALL_REACH_MM behind the body show
        no wall; None when fewer than three rows do."""
        rows = self._rows(k)[0]
        n = rows.size
        middle = rows[int(0.2 * n) : max(int(0.8 * n), int(0.2 * n) + 3)]
        reach = round(WALL_REACH_MM / STEP)
        hs, edges = [], []
        for i in middle:
            j0 = int(np.argmax(self.mask[k][i]))
            behind = self.bone[k][i, max(j0 - reach - 1, 0) : j0][::-1]
            if behind.all():  # into the arch, or out of the section
                continue
            run = int(np.argmin(behind))
            hs.append(self.h[i])
            edges.append(self.a[j0 - run])
        if len(hs) < 3:
            return None
        h, a = np.array(hs), np.array(edges)
        slope, icpt = np.polyfit(h, a, 1)
        for _ in range(2):
            keep = np.abs(a - (slope * h + icpt)) <= WALL_FIT_MM
            if keep.sum() < 3:
                break
            slope, icpt = np.polyfit(h[keep], a[keep], 1)
        return float(slope), float(icpt)

    def corner(self, k: int, top: bool) -> np.ndarray | None:
        """World position of the posterior-superior (top) or posterior-inferior corner: the
        posterior wall (`_posterior_wall`: walls are not always parallel to the axis) at
        the body's top or bottom where the posterior height is read."""
        walls = self.walls(k)
        line = self._posterior_wall(k)
        if walls is None or line is None:
            return None
        post, ant = walls
        h = self.end_at(k, post + HEIGHT_SHARES["posterior"] * (ant - post), top)
        if math.isnan(h):
            return None
        a = line[0] * h + line[1]
        return self.frame.world(np.array(a), np.array(self.l0 + SECTION_OFFSETS[k]), np.array(h))


def section_of(
    geom: LabelGeometry,
    bodies: np.ndarray,
    label: int,
    frame: Frame,
    image: Intensities | None = None,
) -> Section | None:
    """The body's sections, or None when a section leaves the image (cut by the field of view).

    With the image, each section's body is trimmed where the image shows the disc beyond an
    end (`bids_app.vertebrae.endplates`), so a fracture the labels drew whole still reads."""
    ijk = np.argwhere(bodies == label)
    if len(ijk) < 20:
        return None
    world = ijk @ geom.affine[:3, :3].T + geom.affine[:3, 3]
    alh = frame.coords(world)
    if label == L.SACRUM:  # S1 only: the rest of the sacrum runs out of most fields of view
        alh = alh[alh[:, 2] >= alh[:, 2].max() - S1_MM]
    l0 = float(np.median(alh[:, 1]))
    lo, hi = alh.min(0) - MARGIN_MM, alh.max(0) + MARGIN_MM
    a = np.arange(lo[0] - WALL_REACH_MM, hi[0], STEP)  # room behind for the wall's bone
    h = np.arange(hi[2], lo[2], -STEP)
    hh, aa = np.meshgrid(h, a, indexing="ij")
    discs = adjacent_discs(geom, label)
    masks, bone = [], []
    for off in SECTION_OFFSETS:
        pts = frame.world(aa, np.full(aa.shape, l0 + off), hh)
        if not inside_grid(geom.data.shape, geom.affine, pts).all():
            return None
        mask = sample(bodies, geom.affine, pts, order=0) == label
        labels = sample(geom.data, geom.affine, pts, order=0)
        if image is not None:
            values = sample(image[0], image[1], pts, order=1)
            above, below = (labels == d if d is not None else np.zeros_like(mask) for d in discs)
            mask = trim_to_image(mask, values, above, below, STEP)
        masks.append(mask)
        bone.append(labels == label)
    return Section(label, frame, l0, a, h, np.stack(masks), np.stack(bone))


def _reason(
    geom: LabelGeometry, bodies: np.ndarray, label: int, frame: Frame, fifth_lumbar: int | None
) -> str:
    """Why a vertebra's body is not measured ('' when it is)."""
    if label == 11:
        return "C1 has no vertebral body"
    if label == 12:
        return "C2: the dens rises from the body, its height is not graded"
    if label == 46 or label == fifth_lumbar:
        return "possible transitional vertebra (lumbar count is not 5)"
    worst = thick(geom, frame, MAX_VOXEL_MM)
    if worst is not None:
        return f"thick slices: voxels {worst:.1f} mm along the spine axis or AP"
    above, below = adjacent_discs(geom, label)
    if above is None or below is None:
        side = "above" if above is None else "below"
        return f"no disc {side} in the labels: the body is not seen whole"
    if _cut(bodies, label):
        return "cut by the field of view"
    return ""


def _cut(bodies: np.ndarray, label: int) -> bool:
    """Whether the body (not its arch: transverse processes often reach the side of a
    sagittal slab) reaches the border of the image."""
    edges = (bodies[0], bodies[-1], bodies[:, 0], bodies[:, -1], bodies[:, :, 0], bodies[:, :, -1])
    return any((edge == label).any() for edge in edges)


def _transitional(geom: LabelGeometry) -> int | None:
    """The vertebra above the sacrum when the whole lumbar spine is seen and it has 4 or 6
    vertebrae (its name then depends on how one counts)."""
    present = set(geom.present)
    if L.SACRUM not in present or 91 not in present:
        return None
    lumbar = [v for v in range(41, 47) if v in present]
    if len(lumbar) == 5 and 46 not in present:
        return None
    return max(lumbar) if lumbar else None


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    units: str | None = None


LEVEL_COLUMNS: tuple[Column, ...] = (
    Column("level", "Vertebra (C1-L6) or disc (upper-lower, L5-S) of the row."),
    Column("structure", "vertebra or disc."),
    Column("index", "Label value in seg-spine_dseg.tsv."),
    Column(
        "anterior_height_mm",
        "Body height along the local spine axis at 85 % of the "
        "body's AP depth from its posterior wall, on the mid-sagittal section.",
        "mm",
    ),
    Column(
        "middle_height_mm", "Body height along the local spine axis at 50 % of the depth.", "mm"
    ),
    Column(
        "posterior_height_mm",
        "Body height along the local spine axis at 15 % of the depth from the posterior wall.",
        "mm",
    ),
    Column("body_depth_mm", "AP depth of the body on the mid-sagittal section.", "mm"),
    Column("anterior_posterior_ratio", "anterior_height_mm / posterior_height_mm (wedge)."),
    Column("middle_posterior_ratio", "middle_height_mm / posterior_height_mm (biconcave)."),
    Column(
        "posterior_neighbour_ratio",
        "posterior_height_mm / mean posterior height of the "
        "measured bodies directly above and below (crush).",
    ),
    Column(
        "height_loss_percent", "Largest height loss of the three ratios (100 x (1 - ratio)).", "%"
    ),
    Column(
        "genant_grade",
        "Genant semi-quantitative grade from height_loss_percent: 0 below "
        "20 %, 1 from 20 %, 2 from 25 %, 3 above 40 % (Genant 1993). An image measure, "
        "not a diagnosis.",
    ),
    Column(
        "deformity_shape",
        "normal, wedge, biconcave or crush: the ratio with the largest "
        "loss, when graded 1 or more.",
    ),
    Column(
        "slip_mm",
        "Disc rows: antero-posterior offset of the upper body's posterior-"
        "inferior corner over the lower body's posterior-superior corner, along the lower "
        "body's anterior direction (+ anterior, - retrolisthesis).",
        "mm",
    ),
    Column(
        "slip_percent",
        "Disc rows: slip_mm as a percentage of the lower body's superior endplate depth.",
        "%",
    ),
    Column(
        "meyerding_grade",
        "Disc rows: Meyerding grade of an anterior slip: I below 25 %, II "
        "to 50 %, III to 75 %, IV to 100 %, V beyond (Meyerding 1932); none under 10 % and "
        "for retrolisthesis. An image measure, not a diagnosis.",
    ),
    Column("na_reason", "Why the row's measures are n/a (n/a when measured)."),
)
COLUMN_NAMES = tuple(c.name for c in LEVEL_COLUMNS)


@dataclass
class BodyMeasures:
    """The per-level rows and the sections they were read on (for the figure)."""

    rows: list[dict[str, object]]
    sections: dict[int, Section]
    # disc -> (upper vertebra, lower vertebra or sacrum, their slip corners in world mm)
    corners: dict[int, tuple[int, int, np.ndarray, np.ndarray]]


def _nan_row(level: int, structure: str, reason: str) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(COLUMN_NAMES, math.nan)
    row.update(
        level=L.level_name(level),
        structure=structure,
        index=level,
        genant_grade=math.nan,
        deformity_shape="n/a",
        meyerding_grade="n/a",
        na_reason=reason or None,
    )
    return row


def measure_bodies(
    geom: LabelGeometry,
    parts: np.ndarray,
    frames: dict[int, Frame],
    image: Intensities | None = None,
) -> BodyMeasures:
    """Rows for every vertebra present (top to bottom), then every disc between two bodies;
    with the image, heights and corners are read on the image's endplates (`section_of`)."""
    bodies = body_labels(geom, parts)
    fifth = _transitional(geom)
    rows: dict[int, dict[str, object]] = {}
    sections: dict[int, Section] = {}
    reasons: dict[int, str] = {}
    order = [v for v in SPINE_ORDER if v in frames]
    for v in order:
        if v == L.SACRUM:
            continue
        reason = _reason(geom, bodies, v, frames[v], fifth)
        section = section_of(geom, bodies, v, frames[v], image) if v != 11 else None
        if section is not None and not thick(geom, frames[v], MAX_VOXEL_MM):
            sections[v] = section
        if not reason and section is None:
            reason = "cut by the field of view"
        reasons[v] = reason
        row = _nan_row(v, "vertebra", reason)
        if not reason and section is not None:
            row.update(_heights(section))
        rows[v] = row
    # Neighbour ratio and grade, once every posterior height is known.
    vertebrae = [v for v in order if v in rows]
    for i, v in enumerate(vertebrae):
        row = rows[v]
        if row["na_reason"]:
            continue
        near = [
            float(rows[w]["posterior_height_mm"])  # type: ignore[arg-type]
            for w in vertebrae[max(i - 1, 0) : i + 2]
            if w != v and _adjacent(v, w) and not math.isnan(float(rows[w]["posterior_height_mm"]))  # type: ignore[arg-type]
        ]
        hp = float(row["posterior_height_mm"])  # type: ignore[arg-type]
        row["posterior_neighbour_ratio"] = hp / float(np.mean(near)) if near else math.nan
        loss, grade, shape = genant(
            float(row["anterior_posterior_ratio"]),  # type: ignore[arg-type]
            float(row["middle_posterior_ratio"]),  # type: ignore[arg-type]
            float(row["posterior_neighbour_ratio"]),  # type: ignore[arg-type]
        )
        row["height_loss_percent"] = 100 * loss
        row["genant_grade"] = grade if grade is not None else math.nan
        row["deformity_shape"] = shape
    # Listhesis at each disc between two bodies.
    disc_rows: list[dict[str, object]] = []
    corners: dict[int, tuple[int, int, np.ndarray, np.ndarray]] = {}
    if L.SACRUM in frames:
        s1 = section_of(geom, bodies, L.SACRUM, frames[L.SACRUM], image)
        if s1 is not None and not thick(geom, frames[L.SACRUM], MAX_VOXEL_MM):
            sections[L.SACRUM] = s1
    for disc in (d for d in SPINE_ORDER if d in L.DISCS and d in geom.boxes):
        upper, lower = geom.neighbours(disc)
        if upper not in rows or lower is None or not (lower in rows or lower == L.SACRUM):
            continue
        row = _nan_row(disc, "disc", "")
        # Both bodies seen whole and measurable (the sacrum: its superior endplate only).
        missing = [w for w in (upper, lower) if w not in sections or reasons.get(w)]
        if missing:
            name = L.level_name(missing[0])
            why = reasons.get(missing[0]) or "its body is not seen whole"
            row["na_reason"] = why if why.startswith(name) else f"{name}: {why}"
        else:
            slip = _slip(sections[upper], sections[lower])
            if slip is None:
                row["na_reason"] = "a body corner is not found on the section"
            else:
                row["slip_mm"], row["slip_percent"], cu, cl = slip
                row["meyerding_grade"] = meyerding(float(row["slip_percent"]))  # type: ignore[arg-type]
                corners[disc] = (upper, lower, cu, cl)
        disc_rows.append(row)
    return BodyMeasures([rows[v] for v in vertebrae] + disc_rows, sections, corners)


def _adjacent(v: int, w: int) -> bool:
    """Whether two vertebrae are next to each other in the column (one disc between)."""
    i, j = SPINE_ORDER.index(v), SPINE_ORDER.index(w)
    return abs(i - j) == 2 or (abs(i - j) == 1 and 11 in (v, w))


def _heights(section: Section) -> dict[str, object]:
    """Heights, depth and the two within-body ratios, medians over the sections."""
    per: dict[str, list[float]] = {k: [] for k in (*HEIGHT_SHARES, "depth")}
    for k in range(len(SECTION_OFFSETS)):
        walls = section.walls(k)
        if walls is None:
            continue
        post, ant = walls
        per["depth"].append(ant - post)
        for name, share in HEIGHT_SHARES.items():
            per[name].append(section.height_at(k, post + share * (ant - post)))
    med = {k: _median(v) for k, v in per.items()}
    hp = med["posterior"]
    return {
        "anterior_height_mm": med["anterior"],
        "middle_height_mm": med["middle"],
        "posterior_height_mm": hp,
        "body_depth_mm": med["depth"],
        "anterior_posterior_ratio": med["anterior"] / hp if hp > 0 else math.nan,
        "middle_posterior_ratio": med["middle"] / hp if hp > 0 else math.nan,
    }


def _median(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.median(known)) if known else math.nan


def _slip(upper: Section, lower: Section) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """(slip mm, slip % of the lower superior endplate depth, upper corner, lower corner)."""
    k = SECTION_OFFSETS.index(0.0)
    wu = upper.corner(k, top=False)
    wl = lower.corner(k, top=True)
    if wu is None or wl is None:
        return None
    mm = float((wu - wl) @ lower.frame.ant)
    walls = lower.walls(k)
    if lower.label == L.SACRUM or walls is None:
        depth = lower.endplate_depth(k, top=True)
    else:
        depth = walls[1] - walls[0]
    return mm, 100 * mm / depth, wu, wl
