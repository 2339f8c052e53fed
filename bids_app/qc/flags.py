"""Automatic QC flags: what a reviewer should look at first, each with a one-line reason.

Per-image flags come from the final labels and the image geometry; the measurement-outlier
flag needs a group (Tukey fences over n >= `tukey_min_n` images) and is computed at group
level only, because it depends on which images are in the group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from bids_app.bids.stamps import INCOMPLETE, MISSING, Status
from bids_app.plumbing import labels as L
from bids_app.qc import plausibility
from bids_app.qc.geometry import SPINE_ORDER, LabelGeometry
from bids_app.qc.measures import number
from bids_app.qc.thresholds import Thresholds

# Flag ids, in the order they are listed (group_qc.tsv has one column per id).
IMAGE_FLAGS: tuple[str, ...] = (
    "no_segmentation",
    "missing_cord",
    "missing_canal",
    "noncontiguous_levels",
    "split_components",
    "cord_outside_canal",
    "label_fragments",
    "levels_out_of_order",
    "level_used_twice",
    "disc_misplaced",
    "vertebra_count",
    "transitional_vertebra",
    "implausible_size",
    "canal_narrowing",
    "no_landmark",
    "thick_slices",
)
GROUP_FLAGS: tuple[str, ...] = ("measure_outlier",)
FLAG_DESCRIPTIONS: dict[str, str] = {
    "no_segmentation": "No final label image, or an empty one.",
    "missing_cord": "No voxel labelled spinal cord.",
    "missing_canal": "No voxel labelled spinal canal.",
    "noncontiguous_levels": "A vertebra or disc is missing between the highest and lowest "
    "levels found (4 or 6 lumbar vertebrae are accepted).",
    "split_components": "A label has more than one sizeable connected component.",
    "cord_outside_canal": "Too much of the cord surface borders something other than canal.",
    "no_landmark": "No landmark disc (C2-C3, C7-T1, T12-L1, L5-S) was found, so level names "
    "follow the relative order only and may be shifted.",
    "thick_slices": "Slice thickness above the set multiple of the in-plane voxel size, where "
    "level assignment is less reliable.",
    "label_fragments": "A vertebra, disc or sacrum label smaller than the fragment size, away "
    "from the image border; it is left out of the level range and the missing-level check.",
    "levels_out_of_order": "Two consecutive levels whose centroids are not head to foot along "
    "the local spine axis.",
    "level_used_twice": "One level name on two sizeable parts with another level between them.",
    "disc_misplaced": "A disc whose centroid is not between the centroids of the vertebrae just "
    "above and below it (or too far off the line joining them).",
    "vertebra_count": "A region seen whole (bounded above and below in the image) without 7 "
    "cervical or 12 thoracic vertebrae, or with a lumbar count other than 4, 5 or 6.",
    "transitional_vertebra": "4 or 6 lumbar vertebrae: a possible transitional vertebra. Names "
    "are kept as labelled, never renamed.",
    "implausible_size": "A vertebra whose volume or body height, divided by the mean of its "
    "neighbours', is outside [1/size_jump, size_jump] (C1, C2, sacrum and cut vertebrae not "
    "judged).",
    "canal_narrowing": "A disc level where the canal's AP diameter or area, divided by the "
    "mean of the two adjacent mid-vertebral levels' (canal_ap_ratio, canal_csa_ratio), is "
    "below the narrowing ratio.",
    "measure_outlier": "A measurement outside the group's Tukey fences.",
}
# What a flag does to an image's QC status: "fail" (no usable result), "check" (look before
# use) or "info" (stays ok). Every flag not listed is "check".
SEVERITY: dict[str, str] = {"no_segmentation": "fail", "thick_slices": "info"}
QC_STATUSES: dict[str, str] = {
    "ok": "no flag asks for a look",
    "check": "at least one flag to look at before using the result",
    "fail": "no usable segmentation (failed, missing or interrupted run, or no labels)",
}


def _flag(flag_id: str, reason: str) -> dict[str, str]:
    return {"id": flag_id, "reason": reason}


def lumbar_variants() -> list[tuple[int, ...]]:
    """Level orders for 5, 4 and 6 lumbar vertebrae (the usual count first)."""
    no_l6 = tuple(x for x in SPINE_ORDER if x not in (96, 46))
    no_l5 = tuple(x for x in no_l6 if x not in (95, 45))
    return [no_l6, no_l5, SPINE_ORDER]


def missing_levels(present: Sequence[int], cut: Sequence[int] = ()) -> list[int]:
    """Vertebrae/discs missing between the highest and lowest present, in spine order.

    Labels in `cut` (reaching the border of the field of view) are dropped from the two ends
    of the sequence first: the spinous process of a vertebra whose body and disc lie outside
    the image is a fragment at the edge, not evidence of a skipped level.
    """
    seq = [x for x in SPINE_ORDER if x in set(present)]
    while seq and seq[0] in cut:
        seq.pop(0)
    while seq and seq[-1] in cut:
        seq.pop()
    have = set(seq)
    if not have:
        return []
    best: list[int] | None = None
    for order in lumbar_variants():
        if not have <= set(order):
            continue
        idx = [order.index(x) for x in have]
        gaps = [x for x in order[min(idx) : max(idx) + 1] if x not in have]
        if best is None or len(gaps) < len(best):
            best = gaps
    return best or []


def level_range(present: Sequence[int]) -> str:
    """ "C1 to T2" range of the vertebrae and discs present ("" when none); ASCII for TSVs."""
    levels = [x for x in SPINE_ORDER if x in set(present)]
    if not levels:
        return ""
    top, bottom = L.level_name(levels[0]), L.level_name(levels[-1])
    return top if top == bottom else f"{top} to {bottom}"


def cord_surface_outside(geom: LabelGeometry) -> float:
    """Share of the cord's one-voxel outer shell that is not canal (cut borders excluded)."""
    box = geom.boxes[L.CORD]
    grown = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n))
        for s, n in zip(box, geom.data.shape, strict=True)
    )
    sub = geom.data[grown]
    cord = sub == L.CORD
    shell = ndimage.binary_dilation(cord) & ~cord
    total = int(shell.sum())
    return float((shell & (sub != L.CANAL)).sum()) / total if total else 0.0


def split_labels(geom: LabelGeometry, th: Thresholds) -> dict[int, list[int]]:
    """Labels with several sizeable components -> their component sizes in voxels."""
    out = {}
    for label, sizes in geom.component_sizes.items():
        if len(sizes) < 2:
            continue
        big = [
            s
            for s in sizes[1:]
            if s >= th.split_min_fraction * sizes[0] and s * geom.voxel_volume >= th.split_min_mm3
        ]
        if big:
            out[label] = [sizes[0], *big]
    return out


def _names(ids: Sequence[int]) -> str:
    return ", ".join(L.level_name(i) for i in ids)


def segmentation_flags(
    geom: LabelGeometry, th: Thresholds, rows: Sequence[Mapping[str, object]] = ()
) -> list[dict[str, str]]:
    """Flags that read the final labels (and the morphometry `rows` for body heights)."""
    flags = []
    present = geom.present
    if L.CORD not in present:
        flags.append(_flag("missing_cord", "no spinal cord label in the final segmentation"))
    if L.CANAL not in present:
        flags.append(_flag("missing_canal", "no spinal canal label in the final segmentation"))
    levels = plausibility.level_labels(geom, th)
    gaps = missing_levels(levels, [x for x in levels if geom.touches_edge(x)])
    if gaps:
        flags.append(
            _flag(
                "noncontiguous_levels",
                f"{_names(gaps)} missing within {level_range(levels)}",
            )
        )
    flags += [_flag(i, r) for i, r in plausibility.findings(geom, rows, th)]
    flags += narrowing_flags(rows, th)
    split = split_labels(geom, th)
    if split:
        parts = [f"{L.level_name(k)} ({len(v)} parts)" for k, v in sorted(split.items())]
        flags.append(_flag("split_components", "several components: " + ", ".join(parts)))
    if L.CORD in present:
        share = cord_surface_outside(geom)
        if share > th.cord_outside_fraction:
            flags.append(
                _flag(
                    "cord_outside_canal",
                    f"{share:.0%} of the cord surface is not bordered by canal "
                    f"(threshold {th.cord_outside_fraction:.0%})",
                )
            )
    return flags


def narrowing_flags(rows: Sequence[Mapping[str, object]], th: Thresholds) -> list[dict[str, str]]:
    """Disc levels whose canal compression ratio (AP or area) is below the threshold."""
    narrow = []
    for row in rows:
        ratios = [number(row.get(c)) for c in ("canal_ap_ratio", "canal_csa_ratio")]
        if any(r < th.canal_narrowing_ratio for r in ratios):  # NaN compares False
            narrow.append(f"{row.get('abbreviation')} (AP {ratios[0]:.2f}, area {ratios[1]:.2f})")
    if not narrow:
        return []
    return [
        _flag(
            "canal_narrowing",
            f"canal narrower than {th.canal_narrowing_ratio:g} x its adjacent vertebrae' at "
            + ", ".join(narrow),
        )
    ]


def geometry_flags(zooms: Sequence[float], th: Thresholds) -> list[dict[str, str]]:
    """Flags from the voxel size of the source image."""
    z = sorted(float(v) for v in zooms[:3])
    if z[2] > th.thick_slice_ratio * z[1]:
        return [
            _flag(
                "thick_slices",
                f"voxel {z[0]:.2g} x {z[1]:.2g} x {z[2]:.2g} mm: slices {z[2] / z[1]:.1f}x thicker "
                "than in-plane",
            )
        ]
    return []


def landmark_flags(landmarks: Sequence[str]) -> list[dict[str, str]]:
    """Levels are only relative when no landmark was seen; an assumed top disc says so too."""
    assumed = [name for name in landmarks if name.startswith("assumed top disc ")]
    if landmarks and len(assumed) < len(landmarks):
        return []
    reason = "no landmark disc found (C2-C3, C7-T1, T12-L1, L5-S): levels are relative only"
    if assumed:
        reason += f" to the {assumed[0]} given with --assume-top-disc"
    return [_flag("no_landmark", reason)]


def image_flags(
    geom: LabelGeometry | None,
    zooms: Sequence[float] | None,
    landmarks: Sequence[str],
    th: Thresholds,
    *,
    rows: Sequence[Mapping[str, object]] = (),
    missing_reason: str = "no final label image",
) -> list[dict[str, str]]:
    """Every per-image flag, as {"id", "reason"} dicts in IMAGE_FLAGS order.

    `zooms` are the source image's voxel sizes (None when neither image is at hand); `rows`
    the image's morphometry rows, for the body-height rule.
    """
    flags = geometry_flags(zooms, th) if zooms is not None else []
    if geom is not None and plausibility.level_labels(geom, th):
        flags += landmark_flags(landmarks)  # only where level names are shown at all
    if geom is None:
        flags.append(_flag("no_segmentation", missing_reason))
    elif not geom.present:
        flags.append(_flag("no_segmentation", "the final label image is empty"))
    else:
        flags += segmentation_flags(geom, th, rows)
    return sorted(flags, key=lambda f: IMAGE_FLAGS.index(f["id"]))


def qc_status(run_status: str, flag_ids: Sequence[str]) -> str:
    """ok / check / fail of an image from its run status and flags (see QC_STATUSES).

    A run that wrote no segmentation fails; a partial run or any flag that is not "info"
    asks for a check, so a wrong result never shows as ok.
    """
    severities = {SEVERITY.get(f, "check") for f in flag_ids}
    if run_status in (Status.FAILED, MISSING, INCOMPLETE) or "fail" in severities:
        return "fail"
    if run_status != Status.OK or "check" in severities:
        return "check"
    return "ok"


def tukey_fences(values: Sequence[float], k: float) -> tuple[float, float]:
    """(Q1 - k IQR, Q3 + k IQR) of the finite values."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    q1, q3 = np.percentile(v, [25, 75])
    return float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def group_outliers(
    table: Mapping[str, Mapping[str, float]], th: Thresholds
) -> dict[str, list[tuple[str, float, float, float]]]:
    """Per image key, the (measure, value, low fence, high fence) outside Tukey fences.

    `table` maps an image key to {measure key: value}. A measure is judged only when at least
    `th.tukey_min_n` images have a finite value for it.
    """
    measures = sorted({m for row in table.values() for m in row})
    out: dict[str, list[tuple[str, float, float, float]]] = {}
    for m in measures:
        vals = {k: row[m] for k, row in table.items() if m in row and math.isfinite(row[m])}
        if len(vals) < th.tukey_min_n:
            continue
        lo, hi = tukey_fences(list(vals.values()), th.tukey_k)
        for key, v in vals.items():
            if v < lo or v > hi:
                out.setdefault(key, []).append((m, v, lo, hi))
    return out
