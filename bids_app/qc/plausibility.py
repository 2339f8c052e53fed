"""Anatomical plausibility of the final level labels: what a wrong labeling looks like.

A labeling can be wrong while every label is present and whole: names shifted, reused, out of
order, or scattered through the abdomen. These rules compare the labels with what any spine
shows (7 cervical and 12 thoracic vertebrae, levels in order head to foot, each disc between
its two vertebrae, neighbouring vertebrae of similar size) and return (flag id, reason)
pairs. They read the label image only, so they also judge ground-truth or edited labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import cc3d
import numpy as np

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import SPINE_ORDER, SUPERIOR, LabelGeometry
from bids_app.qc.measures import number
from bids_app.qc.thresholds import Thresholds

LEVEL_IDS = frozenset(SPINE_ORDER)
# Vertebrae of each region and the labels that show the region is whole in the field of
# view: one above its first vertebra and one below its last.
REGIONS: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], int], ...] = (
    ("cervical", tuple(range(11, 18)), (), (71, 21), 7),
    ("thoracic", tuple(range(21, 33)), (17, 71), (91, 41), 12),
    ("lumbar", tuple(range(41, 47)), (32, 91), (L.SACRUM,), 5),
)
# Vertebrae whose size is not compared with their neighbours': C1 has no body and C2 carries
# the dens, so both differ from C3 by design; the sacrum is not a vertebra.
NO_SIZE_RULE = frozenset({11, 12, L.SACRUM})
Finding = tuple[str, str]


def _names(ids: Sequence[int]) -> str:
    return ", ".join(L.level_name(i) for i in ids)


def fragments(geom: LabelGeometry, th: Thresholds) -> list[int]:
    """Vertebra, disc and sacrum labels whose whole volume is below `th.fragment_mm3`.

    Such a speck is no level: it must not stretch the level range nor invent missing levels.
    """
    return [
        x
        for x in geom.present
        if x in LEVEL_IDS and geom.count(x) * geom.voxel_volume < th.fragment_mm3
    ]


def level_labels(geom: LabelGeometry, th: Thresholds) -> list[int]:
    """Vertebrae, discs and sacrum present and not fragments, in spine order."""
    tiny = set(fragments(geom, th))
    return [x for x in SPINE_ORDER if x in geom.boxes and x not in tiny]


def counted(geom: LabelGeometry, th: Thresholds) -> LabelGeometry:
    """The labels that count as present, and only those: fragments erased.

    The one decision of which labels an image has. Its morphometry rows, angles, previews,
    qc.json `labels_present` and level range, and from them every group table, plot and
    report, read this geometry; only the fragment flag looks at the labels as written.
    """
    tiny = fragments(geom, th)
    if not tiny:
        return geom
    return LabelGeometry(np.where(np.isin(geom.data, tiny), 0, geom.data), geom.affine)


def fragment_finding(geom: LabelGeometry, th: Thresholds) -> list[Finding]:
    """Fragments away from the image border (a sliver cut by the border is expected)."""
    inner = [x for x in fragments(geom, th) if not geom.touches_edge(x)]
    if not inner:
        return []
    parts = [
        f"{L.level_name(x)} ({geom.count(x) * geom.voxel_volume:.0f} mm3 in "
        f"{len(geom.component_sizes.get(x, []))} part(s))"
        for x in inner
    ]
    return [
        (
            "label_fragments",
            f"labels below {th.fragment_mm3:g} mm3 ignored for the level range: "
            + ", ".join(parts),
        )
    ]


def _axis_between(geom: LabelGeometry, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Local spine axis (superior) halfway between two points; world superior without a canal."""
    axis = geom.spine_axis_near((a + b) / 2)
    return SUPERIOR if axis is None else axis


def order_finding(geom: LabelGeometry, levels: Sequence[int]) -> list[Finding]:
    """Consecutive levels whose centroids are not head to foot along the local spine axis."""
    bad = []
    for upper, lower in itertools.pairwise(levels):
        cu, cl = geom.centroid(upper), geom.centroid(lower)
        if (cu - cl) @ _axis_between(geom, cu, cl) <= 0:
            bad.append(f"{L.level_name(lower)} above {L.level_name(upper)}")
    return [("levels_out_of_order", "; ".join(bad))] if bad else []


def component_centroids(geom: LabelGeometry, label: int, min_voxels: int) -> list[np.ndarray]:
    """World centroids of the components of `label` with at least `min_voxels` voxels."""
    box = geom.boxes[label]
    cc = cc3d.connected_components(geom.data[box] == label, connectivity=26)
    sizes = np.bincount(cc.ravel())
    out = []
    origin = np.array([s.start for s in box], float)
    for comp in np.flatnonzero(sizes[1:] >= min_voxels) + 1:
        ijk = np.argwhere(cc == comp).mean(0) + origin
        out.append(geom.affine[:3, :3] @ ijk + geom.affine[:3, 3])
    return out


def reuse_finding(geom: LabelGeometry, levels: Sequence[int], th: Thresholds) -> list[Finding]:
    """A level name on two sizeable parts with another level's centroid between them."""
    reused = []
    for label in levels:
        sizes = geom.component_sizes.get(label, [])
        if len(sizes) < 2:
            continue
        min_vox = max(th.split_min_fraction * sizes[0], th.split_min_mm3 / geom.voxel_volume)
        parts = component_centroids(geom, label, math.ceil(min_vox))
        if len(parts) < 2:
            continue
        others = [geom.centroid(x) for x in levels if x != label]
        found = False
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                axis = _axis_between(geom, a, b)
                lo, hi = sorted((a @ axis, b @ axis))
                if any(lo < c @ axis < hi for c in others):
                    found = True
        if found:
            reused.append(label)
    if not reused:
        return []
    return [("level_used_twice", f"{_names(reused)} found at two places with other levels between")]


def disc_finding(geom: LabelGeometry, levels: Sequence[int], th: Thresholds) -> list[Finding]:
    """Discs not between the vertebrae (or sacrum) just above and below them.

    The disc centroid must project inside the segment joining the two vertebral centroids and
    lie within `th.disc_offset_mm` of it.
    """
    bad = []
    for above, disc, below in zip(levels, levels[1:], levels[2:], strict=False):
        if disc not in L.DISCS or above in L.DISCS or below in L.DISCS:
            continue
        ca, cb, cd = geom.centroid(above), geom.centroid(below), geom.centroid(disc)
        seg = ca - cb
        t = float((cd - cb) @ seg / (seg @ seg))
        dist = float(np.linalg.norm(cd - (cb + np.clip(t, 0, 1) * seg)))
        if not 0 < t < 1 or dist > th.disc_offset_mm:
            bad.append(
                f"{L.level_name(disc)} not between {L.level_name(above)} and "
                f"{L.level_name(below)} ({dist:.0f} mm off their axis)"
            )
    return [("disc_misplaced", "; ".join(bad))] if bad else []


def count_findings(geom: LabelGeometry, levels: Sequence[int], th: Thresholds) -> list[Finding]:
    """Vertebra count of each region seen whole (bounded above and below in the image).

    Vertebrae are counted as sizeable components, so one name on two vertebrae counts two.
    4 or 6 lumbar vertebrae is a possible transitional vertebra, flagged, never renamed.
    """
    present = set(levels)
    out: list[Finding] = []
    for region, verts, above, below, expected in REGIONS:
        whole_top = not above or any(x in present for x in above)
        if region == "cervical":
            whole_top = 11 in present and not geom.touches_edge(11, SUPERIOR)
        if not (whole_top and any(x in present for x in below)):
            continue
        count = 0
        for v in verts:
            if v not in present:
                continue
            sizes = geom.component_sizes.get(v, [])
            count += 1 + sum(
                s >= th.split_min_fraction * sizes[0] and s * geom.voxel_volume >= th.split_min_mm3
                for s in sizes[1:]
            )
        if count == expected:
            continue
        if region == "lumbar" and count in (4, 6):
            out.append(
                (
                    "transitional_vertebra",
                    f"{count} lumbar vertebrae: possible transitional vertebra "
                    "(names kept as labelled; check the count from C2 or the sacrum)",
                )
            )
        else:
            out.append(
                (
                    "vertebra_count",
                    f"{count} {region} vertebrae where {expected} are expected",
                )
            )
    return out


def _ratio_to_neighbours(values: Mapping[int, float], label: int, order: Sequence[int]) -> float:
    """value / mean of the nearest judged vertebrae above and below (NaN without one)."""
    i = order.index(label)
    near = [values[order[k]] for k in (i - 1, i + 1) if 0 <= k < len(order)]
    near = [v for v in near if math.isfinite(v) and v > 0]
    if not near or not math.isfinite(values[label]):
        return math.nan
    return values[label] / float(np.mean(near))


def size_findings(
    geom: LabelGeometry,
    levels: Sequence[int],
    rows: Sequence[Mapping[str, object]],
    th: Thresholds,
) -> list[Finding]:
    """Vertebral volume or body height jumping against the adjacent vertebrae.

    Only vertebrae not cut by the image border along the spine are compared (a cut vertebra
    is small; a lateral cut trims the transverse processes of its neighbours alike), C1, C2
    and the sacrum never. Ratios to the mean of the two neighbours outside
    [1 / th.size_jump, th.size_jump] are flagged.
    """
    verts = [
        x
        for x in levels
        if x in L.VERTEBRAE
        and x not in NO_SIZE_RULE
        and not geom.touches_edge(x, _axis_between(geom, geom.centroid(x), geom.centroid(x)))
    ]
    heights = {number(r.get("index")): number(r.get("body_height_mm")) for r in rows}
    measures = {
        "volume": {v: geom.count(v) * geom.voxel_volume for v in verts},
        "body height": {v: heights.get(v, math.nan) for v in verts},
    }
    bad = []
    for name, values in measures.items():
        for v in verts:
            r = _ratio_to_neighbours(values, v, verts)
            if math.isfinite(r) and not 1 / th.size_jump <= r <= th.size_jump:
                bad.append(f"{L.level_name(v)} {name} {r:.2f}x its neighbours'")
    return [("implausible_size", "; ".join(bad))] if bad else []


def findings(
    geom: LabelGeometry, rows: Sequence[Mapping[str, object]], th: Thresholds
) -> list[Finding]:
    """Every plausibility finding of a non-empty label image."""
    levels = level_labels(geom, th)
    return [
        *fragment_finding(geom, th),
        *order_finding(geom, levels),
        *reuse_finding(geom, levels, th),
        *disc_finding(geom, levels, th),
        *count_findings(geom, levels, th),
        *size_findings(geom, levels, rows, th),
    ]
