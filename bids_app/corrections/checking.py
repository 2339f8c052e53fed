"""Manual corrections: check a correction file against its image before anything uses it.

A corrected segmentation must lie on its image's grid, hold only final label ids and say in
its JSON sidecar that it is manual (`GeneratedBy` with `"Name": "Manual"`, or
`"Manual": true`): SpineSeg's outputs say `"Manual": false`, so a copy of them is never taken
for a correction. Disc points must lie on the grid too, go down the spine as their number
grows, and become a localizer image the engine reads like any other.

A problem with a correction is one line naming the file (`CorrectionError`); the image it
targets is then left as it is. Knows nothing of networks: it hands over arrays and images.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import nibabel as nib
import numpy as np

from bids_app.bids.stamps import source_stem
from bids_app.corrections.finding import DISCS_KIND, SEG_KIND, Correction
from bids_app.plumbing.labels import (
    CANAL,
    CORD,
    DISCS,
    FINAL_IDS,
    FIRST_DISC_LEVEL,
    LEVEL_DISCS,
    SACRUM,
    VERTEBRAE,
    level_name,
)

# SCT disc number -> final disc label id (docs/method.md §4.6: 3 = C2-C3 ... 25 = L5-S).
SCT_DISCS: dict[int, int] = {FIRST_DISC_LEVEL + i: d for i, d in enumerate(LEVEL_DISCS)}
SCT_WITHOUT_DISC = (1, 2)  # C1 and C1-C2: TotalSpineSeg has no disc label for them
# Each point becomes a ball of this radius in the localizer: it must overlap its disc as
# the networks segmented it, while disc centres are 12 mm or more apart.
POINT_RADIUS_MM = 4.0
# A point inside a vertebra farther than this from every disc is a body centre, not a disc
# (SCT's labels.nii.gz puts its values at vertebral body centres, half a body from a disc).
ON_DISC_MM = 3.0
GRID_TOLERANCE_MM = 1e-3


class CorrectionError(Exception):
    """One line: the correction file and what is wrong with it."""


@dataclass
class Corrected:
    """An image with its checked corrections: corrected labels, or disc points as a
    localizer image."""

    image: nib.Nifti1Image
    labels: np.ndarray | None  # final labels on the image's grid
    localizer: nib.Nifti1Image | None


def check(
    found: Mapping[str, Correction], img: nib.Nifti1Image, labels: np.ndarray | None = None
) -> Corrected:
    """The image's corrections in use, checked against it (a corrected segmentation wins
    over disc points); CorrectionError names the file and its problem. `labels`, the
    image's current final labels on its grid when it has any, lets disc points be checked
    against the discs they must lie on."""
    if SEG_KIND in found:
        return Corrected(img, corrected_labels(found[SEG_KIND], img), None)
    points = disc_points(found[DISCS_KIND], img)
    if labels is not None:
        points_on_discs(found[DISCS_KIND], points, labels, img.affine)
    return Corrected(img, None, points_localizer(points))


def points_on_discs(
    corr: Correction, points: Mapping[int, np.ndarray], labels: np.ndarray, affine: np.ndarray
) -> None:
    """Refuse the first disc point that does not lie on a disc of `labels` (final labels on
    the grid of `affine`): no disc within its localizer ball (the labeling would drop it), or
    inside a vertebra farther than ON_DISC_MM from every disc (a body-centre label file).
    One line names the point, where it lies and how far the nearest disc is."""
    disc_ijk = np.argwhere(np.isin(labels, list(DISCS)))
    discs = nib.affines.apply_affine(affine, disc_ijk) if disc_ijk.size else np.zeros((0, 3))
    inv = np.linalg.inv(affine)
    shape = np.array(labels.shape[:3])
    for disc, p in sorted(points.items()):
        gap = float(np.sqrt(((discs - p) ** 2).sum(1).min())) if len(discs) else np.inf
        at = int(
            labels[
                tuple(np.clip(np.rint(nib.affines.apply_affine(inv, p)), 0, shape - 1).astype(int))
            ]
        )
        in_bone = at in VERTEBRAE or at == SACRUM
        if gap <= POINT_RADIUS_MM and not (in_bone and gap > ON_DISC_MM):
            continue
        where = f"({p[0]:.0f}, {p[1]:.0f}, {p[2]:.0f}) mm"
        far = f"{gap:.0f} mm from the nearest disc" if np.isfinite(gap) else "no disc in the labels"
        if in_bone:
            raise CorrectionError(
                f"{corr.path}: disc point {DISCS[disc]} at {where} lies in the vertebral body "
                f"of {level_name(at)}, {far}: this looks like a body-centre label file (values "
                "at vertebral body centres, as SCT's labels.nii.gz), not disc points"
            )
        what = {CORD: "the spinal cord", CANAL: "the spinal canal", 0: "no structure"}
        raise CorrectionError(
            f"{corr.path}: disc point {DISCS[disc]} at {where} lies in "
            f"{what.get(at, level_name(at))}, {far}: not on a disc"
        )


def _load(corr: Correction, img: nib.Nifti1Image) -> np.ndarray:
    """The correction's voxels, refused unless it lies on the image's grid."""
    try:
        loaded = nib.load(str(corr.path))
        data = np.asanyarray(getattr(loaded, "dataobj", None))
    except Exception as e:  # nibabel raises many kinds for a damaged file
        raise CorrectionError(f"{corr.path}: cannot read it ({str(e).splitlines()[0]})") from e
    if not isinstance(loaded, nib.Nifti1Image):
        raise CorrectionError(f"{corr.path}: not a NIfTI image")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    shape = img.shape[:3]
    if data.shape != shape:
        raise CorrectionError(
            f"{corr.path}: on another grid than its image ({'x'.join(map(str, data.shape))} "
            f"voxels, the image has {'x'.join(map(str, shape))})"
        )
    theirs, ours = nib.aff2axcodes(loaded.affine), nib.aff2axcodes(img.affine)
    if theirs != ours:
        raise CorrectionError(
            f"{corr.path}: another orientation than its image ({''.join(map(str, theirs))}, "
            f"the image is {''.join(map(str, ours))})"
        )
    shift = _max_corner_shift(loaded.affine, img.affine, shape)
    if shift > GRID_TOLERANCE_MM:
        raise CorrectionError(
            f"{corr.path}: on another grid than its image (voxels placed up to {shift:.2f} mm "
            "away: another affine)"
        )
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise CorrectionError(f"{corr.path}: label values must be whole numbers")
    return data.astype(np.int64)


def _max_corner_shift(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest distance (mm) between where two affines put the corners of the grid."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1)
    pts = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs((a - b) @ pts)[:3].max())


def _unknown(corr: Correction, values: Iterable[int], allowed: str) -> CorrectionError:
    shown = ", ".join(str(v) for v in sorted(values)[:8])
    return CorrectionError(f"{corr.path}: unknown label value(s) {shown} ({allowed})")


def corrected_labels(corr: Correction, img: nib.Nifti1Image) -> np.ndarray:
    """The corrected final labels (uint8, on the image's grid), checked."""
    data = _load(corr, img)
    present = {int(v) for v in np.unique(data)} - {0}
    unknown = present - FINAL_IDS
    if unknown:
        raise _unknown(corr, unknown, "a final segmentation holds the ids of seg-spine_dseg.tsv")
    if not present:
        raise CorrectionError(f"{corr.path}: the corrected segmentation is empty")
    _require_manual(corr)
    return data.astype(np.uint8)


def _require_manual(corr: Correction) -> None:
    """A corrected segmentation must say it is manual: SpineSeg's own outputs do not."""
    sidecar = corr.path.with_name(source_stem(corr.path.name) + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and is_manual(meta):
        return
    raise CorrectionError(
        f"{corr.path}: its sidecar {sidecar.name} does not mark it as manual (add "
        '"GeneratedBy": [{"Name": "Manual"}]); an automatic result is never read back'
    )


def is_manual(meta: Mapping[str, object]) -> bool:
    """A sidecar that says a human made the file."""
    generated = meta.get("GeneratedBy")
    names = (
        [g.get("Name") for g in generated if isinstance(g, Mapping)]
        if isinstance(generated, list)
        else []
    )
    return "Manual" in names or meta.get("Manual") is True


def disc_points(corr: Correction, img: nib.Nifti1Image) -> dict[int, np.ndarray]:
    """Final disc id -> scanner position (RAS mm) of its point, checked.

    Values are SCT disc numbers (1-25) or final disc ids (63-100), never a mix. A disc
    drawn over several voxels counts at their centre. Discs must go down the spine as
    their number grows (scanner z decreasing).
    """
    data = _load(corr, img)
    present = sorted({int(v) for v in np.unique(data)} - {0})
    if not present:
        raise CorrectionError(f"{corr.path}: no disc point in the file")
    if set(present) <= set(SCT_DISCS) | set(SCT_WITHOUT_DISC):
        to_disc = SCT_DISCS
    elif set(present) <= set(DISCS):
        to_disc = {d: d for d in DISCS}
    else:
        raise _unknown(
            corr,
            [v for v in present if v not in SCT_DISCS and v not in DISCS],
            "disc points are SCT disc numbers 1-25 or disc label ids 63-100, not both",
        )
    points: dict[int, np.ndarray] = {}
    for value in present:
        if value not in to_disc:
            continue
        ijk = np.argwhere(data == value).mean(axis=0)
        points[to_disc[value]] = nib.affines.apply_affine(img.affine, ijk)
    if not points:
        raise CorrectionError(f"{corr.path}: only C1 / C1-C2 points, which mark no disc here")
    order = sorted(points)
    for upper, lower in pairwise(order):
        if points[lower][2] >= points[upper][2]:
            raise CorrectionError(
                f"{corr.path}: disc points out of order ({DISCS[lower]} is not below "
                f"{DISCS[upper]})"
            )
    return points


def points_localizer(points: Mapping[int, np.ndarray]) -> nib.Nifti1Image:
    """A localizer image (final disc ids) with a ball around each point, on a 1 mm RAS grid
    that just holds them: the engine resamples it like any localizer's labels."""
    r = int(np.ceil(POINT_RADIUS_MM)) + 1
    pts = np.array(list(points.values()))
    origin = np.floor(pts.min(axis=0)) - r
    shape = tuple(int(n) for n in np.ceil(pts.max(axis=0) - origin) + r + 1)
    data = np.zeros(shape, np.uint8)
    ball = np.indices((2 * r + 1,) * 3).reshape(3, -1).T - r  # offsets around a voxel
    for disc, p in points.items():
        centre = np.round(p - origin).astype(int)
        voxels = centre + ball
        near = np.linalg.norm(voxels + origin - p, axis=1) <= POINT_RADIUS_MM
        data[tuple(voxels[near].T)] = disc
    affine = np.eye(4)
    affine[:3, 3] = origin
    return nib.Nifti1Image(data, affine)
