"""Random spine anatomy of a phantom, in world millimetres, independent of any acquisition.

The spine is described along its own arc length `s` (0 at the top of C1, growing caudally)
as a table of segments (C1, vertebral bodies, discs, sacrum), and placed in the world by a
smooth canal centreline x_c(z), y_c(z) (RAS mm). Keeping anatomy and acquisition apart is
what lets the same spine be rendered in any orientation and voxel size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bids_app.plumbing import labels as L

# Segment kinds (integers so per-sample look-ups stay vectorised).
NONE, C1, BODY, DISC, SACRUM = 0, 1, 2, 3, 4
NARROWING_RAMP_MM = 3.0  # a narrowing fades out linearly over this length beyond its disc
SHAPES = ("wedge", "biconcave", "crush")
# Height loss drawn for a requested Genant grade: the middle of the grade's band (grade 3:
# 47 %, well past its 40 % edge), so that the drawn shape grades as asked.
GRADE_LOSS = {1: 0.225, 2: 0.325, 3: 0.47}
# Biconcave dish: the endplates sink within this share of the body's half-depth and half-width.
DISH_RADIUS = 0.65
# Wedge: the superior endplate tilts down from this AP share (from the posterior wall), so the
# height at that share is the intact one.
WEDGE_HINGE = 0.15


@dataclass(frozen=True)
class Segment:
    """One slab of the column along `s`: a vertebral body, a disc, C1 or the sacrum."""

    kind: int
    label: int  # final label id (docs/method.md §4.5)
    s_top: float
    s_bot: float
    depth: float  # antero-posterior size of the body/disc (mm)
    width: float  # left-right size (mm)

    @property
    def height(self) -> float:
        return self.s_bot - self.s_top


@dataclass(frozen=True)
class Lesion:
    """An intramedullary lesion: an ellipsoid in the spine frame, clipped to the cord.

    `level` is a vertebra name ("C4", "T7"); its level runs from the middle of the disc
    above to the middle of the disc below, and `position` places the centre in it (0 = top,
    1 = bottom). Sizes are in mm along the cord (`length`), antero-posterior (`width`) and
    left-right (`lr_width`, default 1.3 x `width`); `offset` moves the centre anteriorly.
    """

    level: str
    length: float
    width: float
    lr_width: float | None = None
    position: float = 0.5
    offset: float = 0.0

    @property
    def lr(self) -> float:
        return self.lr_width if self.lr_width is not None else 1.3 * self.width


@dataclass(frozen=True)
class Deformity:
    """A vertebral body deformity of Genant's semi-quantitative grade 1-3 at one vertebra.

    `wedge`: the superior endplate tilts down anteriorly (anterior height lost against the
    posterior); `biconcave`: both endplates sink in a central dish (middle height lost);
    `crush`: the whole body is lower (posterior height lost against its neighbours). The height
    lost is `loss` (a fraction), by default the middle of the grade's band (`GRADE_LOSS`).
    """

    level: str
    shape: str
    grade: int
    loss: float | None = None

    @property
    def fraction(self) -> float:
        return self.loss if self.loss is not None else GRADE_LOSS[self.grade]


@dataclass(frozen=True)
class Slip:
    """An anterior slip (listhesis) of the vertebra above `disc` over the one below it, as a
    percentage of the lower body's superior endplate depth; the whole column above moves."""

    disc: str
    percent: float


@dataclass
class Anatomy:
    """A whole spine from above C1 to the sacrum, with its world placement."""

    seed: int
    scale: float
    segments: list[Segment]
    n_lumbar: int
    # Canal and cord cross-section radii (AP, LR) as piecewise-linear functions of s.
    radius_knots_s: np.ndarray
    canal_radii: np.ndarray  # (n_knots, 2)
    cord_radii: np.ndarray  # (n_knots, 2)
    cord_end_s: float
    canal_end_s: float
    arch_thickness: float
    # Centreline: world z samples (descending, superior first) with x, y and arc length s.
    z_table: np.ndarray
    x_table: np.ndarray
    y_table: np.ndarray
    s_table: np.ndarray
    curves: dict[str, float] = field(default_factory=dict)
    # Disc label -> factor on the canal and cord antero-posterior radii over that disc.
    narrowing: dict[int, float] = field(default_factory=dict)
    lesions: tuple[Lesion, ...] = ()
    deformities: tuple[Deformity, ...] = ()
    slips: tuple[Slip, ...] = ()

    @property
    def s_total(self) -> float:
        return self.segments[-1].s_bot

    def segment(self, label: int) -> Segment:
        return next(seg for seg in self.segments if seg.label == label)

    def z_at_s(self, s: np.ndarray | float) -> np.ndarray:
        """World z (mm) of the centreline point at arc length s."""
        return np.interp(s, self.s_table, self.z_table)

    def centre_at_s(self, s: float) -> np.ndarray:
        """World RAS position (mm) of the canal centre at arc length s."""
        z = float(self.z_at_s(s))
        return np.array(
            [
                np.interp(-z, -self.z_table, self.x_table),
                np.interp(-z, -self.z_table, self.y_table),
                z,
            ]
        )

    def body_offset(self, depth: float, s: float) -> float:
        """AP distance from the canal centre to the centre of a body of this depth at s."""
        canal_ap = float(np.interp(s, self.radius_knots_s, self.canal_radii[:, 0]))
        return canal_ap + self.arch_thickness * 0.5 + depth / 2

    def ap_factor(self, s: np.ndarray | float) -> np.ndarray:
        """Factor on the canal and cord AP radii at arc length s: the `narrowing` factor over
        its disc, back to 1 linearly within `NARROWING_RAMP_MM` (scaled) above and below."""
        s = np.asarray(s, float)
        out = np.ones_like(s)
        ramp = NARROWING_RAMP_MM * self.scale
        for label, factor in self.narrowing.items():
            seg = self.segment(label)
            outside = np.maximum(np.maximum(seg.s_top - s, s - seg.s_bot), 0.0)
            weight = np.clip(1.0 - outside / ramp, 0.0, 1.0)
            out = np.minimum(out, 1.0 - (1.0 - factor) * weight)
        return out

    def level_range(self, label: int) -> tuple[float, float]:
        """Arc-length range of a vertebral level: from the middle of the disc above (C1: its
        top; C2: its body's top) to the middle of the disc below (sacrum: the end)."""
        i = next(k for k, seg in enumerate(self.segments) if seg.label == label)
        seg = self.segments[i]
        above = self.segments[i - 1] if i > 0 else None
        below = self.segments[i + 1] if i + 1 < len(self.segments) else None
        top = (above.s_top + above.s_bot) / 2 if above and above.kind == DISC else seg.s_top
        bot = (below.s_top + below.s_bot) / 2 if below and below.kind == DISC else seg.s_bot
        return top, bot

    def level_at_s(self, s: np.ndarray) -> np.ndarray:
        """Vertebral level label (11-50) at each arc length; 0 outside the column."""
        s = np.asarray(s, float)
        out = np.zeros(s.shape, np.int16)
        for seg in self.segments:
            if seg.kind != DISC:
                top, bot = self.level_range(seg.label)
                out[(s >= top) & (s < bot)] = seg.label
        return out

    def lesion_centre_s(self, lesion: Lesion) -> float:
        label = next((k for k, v in L.VERTEBRAE.items() if v == lesion.level), None)
        if label is None or label not in {seg.label for seg in self.segments}:
            raise ValueError(f"lesion: no vertebra {lesion.level!r} in this anatomy")
        top, bot = self.level_range(label)
        return top + lesion.position * (bot - top)

    def s_range_of(self, labels: set[int]) -> tuple[float, float]:
        segs = [seg for seg in self.segments if seg.label in labels]
        return min(seg.s_top for seg in segs), max(seg.s_bot for seg in segs)

    def deformity_at(self, label: int) -> Deformity | None:
        name = L.VERTEBRAE.get(label)
        return next((d for d in self.deformities if d.level == name), None)

    def endplate_sink(
        self, label: int, x: np.ndarray, lrn: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """How far (mm, along s) the superior and inferior endplates of a body sink at AP
        share `x` (0 posterior wall, 1 anterior wall) and left-right share `lrn` (-1..1).

        Zero for an intact or crushed body (a crush is a lower segment, see
        `random_anatomy`); the space left is the adjacent disc's.
        """
        zero = np.zeros(np.broadcast(x, lrn).shape)
        dfm = self.deformity_at(label)
        if dfm is None or dfm.shape == "crush":
            return zero, zero
        h = self.segment(label).height
        r = dfm.fraction
        if dfm.shape == "wedge":
            # Height at share x: h (1 - r (x - hinge) / (1 - 2 hinge)); anterior share 1-hinge
            # keeps h (1 - r).
            return zero + r * h * np.clip((x - WEDGE_HINGE) / (1 - 2 * WEDGE_HINGE), 0, None), zero
        rho2 = ((x - 0.5) / 0.5) ** 2 + lrn**2
        dish = 0.5 * r * h * np.clip(1 - rho2 / DISH_RADIUS**2, 0, None)
        return zero + dish, zero + dish

    def slip_mm(self, disc: int) -> float:
        """Anterior offset (mm) drawn at a disc: its percentage of the lower body's depth."""
        name = L.DISCS.get(disc)
        slip = next((x for x in self.slips if x.disc == name), None)
        if slip is None:
            return 0.0
        i = next(k for k, seg in enumerate(self.segments) if seg.label == disc)
        return slip.percent / 100 * self.segments[i + 1].depth

    def slip_offset(self, s: np.ndarray) -> np.ndarray:
        """Anterior offset (mm) of the column at arc lengths s: each slip's full offset above
        its disc, none below, linearly across the disc (a shear, endplates kept parallel)."""
        out = np.zeros_like(np.asarray(s, float))
        for slip in self.slips:
            label = next(k for k, v in L.DISCS.items() if v == slip.disc)
            seg = self.segment(label)
            out = out + self.slip_mm(label) * np.clip((seg.s_bot - s) / seg.height, 0, 1)
        return out


def _vertebra_labels(n_lumbar: int) -> list[int]:
    return [*range(11, 18), *range(21, 33), *range(41, 41 + n_lumbar)]


def _disc_below(vertebra: int, n_lumbar: int) -> int:
    """Final disc id below a vertebra (the last lumbar vertebra sits on L5-S = 100)."""
    if vertebra == 40 + n_lumbar:
        return 100
    if vertebra == 17:
        return 71
    if vertebra == 32:
        return 91
    if 12 <= vertebra <= 16:
        return vertebra + 51  # C2 -> 63 ... C6 -> 67
    if 21 <= vertebra <= 31:
        return vertebra + 51  # T1 -> 72 ... T11 -> 82
    return vertebra + 51  # L1 -> 92 ... L5 -> 96 (only when 6 lumbar vertebrae)


def _narrowing_labels(narrowing: Mapping[str, float], segments: list[Segment]) -> dict[int, float]:
    """{"C5-C6": 0.5} -> {66: 0.5}; ValueError for an unknown or absent disc or a bad factor."""
    by_name = {name: label for label, name in L.DISCS.items()}
    present = {seg.label for seg in segments}
    out = {}
    for name, factor in narrowing.items():
        label = by_name.get(name)
        if label is None or label not in present:
            raise ValueError(f"narrowing: no disc {name!r} in this anatomy")
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"narrowing: factor {factor} at {name} must be in (0, 1]")
        out[label] = float(factor)
    return out


def _deformed_segments(
    segments: list[Segment], deformities: tuple[Deformity, ...]
) -> list[Segment]:
    """The segments with each crushed body lowered to (1 - loss) times the mean height of
    its neighbouring bodies, the column below moving up; ValueError for a bad deformity."""
    index = {seg.label: i for i, seg in enumerate(segments)}
    crushed: dict[int, float] = {}
    for dfm in deformities:
        label = next((k for k, v in L.VERTEBRAE.items() if v == dfm.level), None)
        if label is None or label not in index or label in (11, 12):
            raise ValueError(f"deformity: no vertebral body {dfm.level!r} (C3 to L6) here")
        if dfm.shape not in SHAPES:
            raise ValueError(f"deformity at {dfm.level}: shape must be one of {', '.join(SHAPES)}")
        if dfm.grade not in GRADE_LOSS or not 0.0 < dfm.fraction < 0.8:
            raise ValueError(f"deformity at {dfm.level}: grade must be 1, 2 or 3")
        if sum(d.level == dfm.level for d in deformities) > 1:
            raise ValueError(f"deformity: {dfm.level} given twice")
        if dfm.shape == "crush":
            i = index[label]
            near = [
                segments[j].height
                for j in (i - 2, i + 2)
                if 0 <= j < len(segments) and segments[j].kind == BODY
            ]
            crushed[label] = (1 - dfm.fraction) * float(np.mean(near or [segments[i].height]))
    if not crushed:
        return segments
    out, shift = [], 0.0
    for seg in segments:
        top = seg.s_top - shift
        if seg.label in crushed:
            shift += seg.height - crushed[seg.label]
        out.append(Segment(seg.kind, seg.label, top, seg.s_bot - shift, seg.depth, seg.width))
    return out


def _check_slips(anat: Anatomy) -> None:
    """Refuse slips at absent discs, under C2 or with a percentage outside (0, 100]."""
    for slip in anat.slips:
        label = next((k for k, v in L.DISCS.items() if v == slip.disc), None)
        if label is None or label not in {seg.label for seg in anat.segments} or label == 63:
            raise ValueError(f"slip: no disc {slip.disc!r} below C3 in this anatomy")
        if not 0.0 < slip.percent <= 100.0:
            raise ValueError(f"slip at {slip.disc}: percent must be in (0, 100]")


def _check_lesions(anat: Anatomy) -> None:
    """Refuse lesions that would not be intramedullary (sizes, level, below the conus)."""
    for les in anat.lesions:
        centre = anat.lesion_centre_s(les)
        if min(les.length, les.width, les.lr) <= 0 or not 0.0 <= les.position <= 1.0:
            raise ValueError(f"lesion at {les.level}: sizes must be > 0, position in [0, 1]")
        if centre + les.length / 2 > anat.cord_end_s - 20 * anat.scale:
            raise ValueError(f"lesion at {les.level}: reaches below the cord's end")


def random_anatomy(
    seed: int,
    n_lumbar: int | None = None,
    narrowing: Mapping[str, float] | None = None,
    lesions: tuple[Lesion, ...] = (),
    deformities: tuple[Deformity, ...] = (),
    slips: tuple[Slip, ...] = (),
) -> Anatomy:
    """Draw a plausible adult spine; sizes follow published vertebral morphometry roughly.

    `narrowing` maps disc names to a factor on the canal and cord antero-posterior size at
    that disc ({"C5-C6": 0.5} halves it), the ground truth of the canal narrowing measures.
    The vertebrae and discs keep their place: only the canal shrinks. `lesions` are drawn
    inside the cord by the renderer (hyperintense on T2w); their truth is
    `bids_app.phantom.lesions.lesion_truth`. `deformities` (wedge, biconcave, crush of a
    Genant grade) and `slips` (anterior listhesis) change the column after it is drawn, so
    the random draws, hence the rest of the spine, stay those of the seed; their truth is
    `bids_app.phantom.vertebrae`.
    """
    rng = np.random.default_rng(seed)
    if n_lumbar is None:
        n_lumbar = int(rng.choice([4, 5, 6], p=[0.05, 0.9, 0.05]))
    scale = float(rng.uniform(0.85, 1.08))

    def jitter() -> float:
        return float(rng.uniform(0.93, 1.07))

    segments: list[Segment] = []
    s = 0.0
    verts = _vertebra_labels(n_lumbar)
    for v in verts:
        if v == 11:
            h, d, w = 10.0, 0.0, 0.0
            segments.append(Segment(C1, 11, s, s + h * scale, d, w))
            s += h * scale
            continue
        k: float
        if v <= 17:  # C2-C7
            k = v - 12
            h, d, w, hd = 14.0 if v == 12 else 13.5, 15.0 + 0.4 * k, 17.0 + 1.0 * k, 4.5 + 0.2 * k
        elif v <= 32:  # T1-T12
            k = (v - 21) / 11
            h, d, w, hd = 16 + 8 * k, 18 + 10 * k, 25 + 12 * k, 4.0 + 2.5 * k
        else:  # lumbar
            k = (v - 41) / max(n_lumbar - 1, 1)
            h, d, w, hd = 25 + 3 * k, 30 + 3 * k, 40 + 8 * k, 9.0 + 3 * k
        h, d, w, hd = (x * scale * jitter() for x in (h, d, w, hd))
        segments.append(Segment(BODY, v, s, s + h, d, w))
        s += h
        segments.append(Segment(DISC, _disc_below(v, n_lumbar), s, s + hd, d * 1.02, w * 1.02))
        s += hd
    sac_len = 95.0 * scale
    segments.append(Segment(SACRUM, L.SACRUM, s, s + sac_len, 34 * scale, 48 * scale))
    segments = _deformed_segments(segments, tuple(deformities))
    s_total = segments[-1].s_bot

    def s_of(label: int) -> float:
        seg = next(x for x in segments if x.label == label)
        return (seg.s_top + seg.s_bot) / 2

    knots = np.array(
        [
            -60.0,
            s_of(14),
            s_of(17),
            s_of(26),
            s_of(32),
            s_of(41 + n_lumbar - 1),
            s_total - sac_len * 0.4,
            s_total + 40,
        ]
    )
    canal = (
        np.array(
            [
                [7.5, 11.5],
                [7.0, 11.5],
                [7.0, 9.0],
                [7.0, 8.0],
                [7.5, 9.5],
                [8.5, 11.5],
                [4.0, 6.0],
                [3.0, 4.0],
            ]
        )
        * scale
    )
    cord = (
        np.array(
            [
                [4.0, 6.0],
                [4.0, 6.8],
                [3.8, 5.5],
                [3.6, 4.3],
                [3.8, 4.8],
                [2.0, 2.5],
                [1.0, 1.0],
                [1.0, 1.0],
            ]
        )
        * scale
    )
    l1 = next(x for x in segments if x.label == 41)
    cord_end = float(rng.uniform(l1.s_top, l1.s_bot + 12 * scale))  # conus near L1-L2

    # Sagittal curves (+y = anterior) and mild scoliosis, as smooth bumps along s.
    curves = {
        "cervical_lordosis": float(rng.uniform(4, 14)) * scale,
        "thoracic_kyphosis": float(rng.uniform(8, 24)) * scale,
        "lumbar_lordosis": float(rng.uniform(8, 22)) * scale,
        "scoliosis": float(rng.uniform(0, 7)) * scale,
        "scoliosis_phase": float(rng.uniform(0, 2 * np.pi)),
    }
    s_fine = np.arange(-80.0, s_total + 80.0, 0.5)

    def bump(centre: float, sigma: float) -> np.ndarray:
        return np.exp(-0.5 * ((s_fine - centre) / sigma) ** 2)

    y = (
        curves["cervical_lordosis"] * bump(s_of(14), 45 * scale)
        - curves["thoracic_kyphosis"] * bump(s_of(27), 90 * scale)
        + curves["lumbar_lordosis"] * bump(s_of(41 + n_lumbar // 2), 60 * scale)
        - 0.8 * curves["lumbar_lordosis"] * bump(s_total - 40 * scale, 40 * scale)
    )
    x = curves["scoliosis"] * np.sin(
        2 * np.pi * s_fine / (s_total * 0.9) + curves["scoliosis_phase"]
    )
    # Arc length -> world z: integrate dz = ds / sqrt(1 + x'^2 + y'^2) downwards from z = 0.
    dxs, dys = np.gradient(x, s_fine), np.gradient(y, s_fine)
    dz = 1.0 / np.sqrt(1.0 + dxs**2 + dys**2)
    z = -np.concatenate([[0.0], np.cumsum(0.5 * (dz[1:] + dz[:-1]) * np.diff(s_fine))])
    z += float(rng.uniform(-20, 20))
    anat = Anatomy(
        seed=seed,
        scale=scale,
        segments=segments,
        n_lumbar=n_lumbar,
        radius_knots_s=knots,
        canal_radii=canal,
        cord_radii=cord,
        cord_end_s=cord_end,
        canal_end_s=s_total - sac_len * 0.35,
        arch_thickness=float(rng.uniform(4.5, 6.0)) * scale,
        z_table=z,
        x_table=x,
        y_table=y,
        s_table=s_fine,
        curves=curves,
        narrowing=_narrowing_labels(narrowing or {}, segments),
        lesions=tuple(lesions),
        deformities=tuple(deformities),
        slips=tuple(slips),
    )
    _check_lesions(anat)
    _check_slips(anat)
    return anat
