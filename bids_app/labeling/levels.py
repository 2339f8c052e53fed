"""Single-voxel level markers and the alternate-disc mask (docs/method.md §2.6, §2.8, §4.6)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import interpolate, ndimage
from scipy.spatial import cKDTree

from bids_app.labeling.components import label_mask
from bids_app.labeling.errors import LabelingError
from bids_app.plumbing.labels import FIRST_DISC_LEVEL, LEVEL_DISCS

C1_MARKER, C1_C2_MARKER = 1, 2
MIN_C1_VOXELS = 500  # levels 1 and 2 need more C1 voxels than this
SMOOTHING = 8000.0  # centreline spline smoothing of the reference (SCT bspline)
# Relative distance within which two disc voxels count as equally near the centreline.
TIE_TOLERANCE = 1e-9


def canal_centreline(mask: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Smoothed canal centreline: one float (x, y, z) point per integer z of the canal.

    Per-slice mean positions fitted with a smoothing spline in z (SCT's bspline rule).
    `mask` may be a crop whose first voxel sits at `origin` of the segmentation's 1 mm RAS
    grid; the points are on that full grid.
    """
    per_xz = mask.sum(axis=1, dtype=np.int64)  # (nx, nz)
    per_yz = mask.sum(axis=0, dtype=np.int64)  # (ny, nz)
    counts = per_xz.sum(axis=0)
    zs = np.flatnonzero(counts)
    if zs.size == 0:
        raise LabelingError("no spinal canal or cord in the segmentation: levels cannot be placed")
    x0, y0, z0 = origin
    # Integer sums of absolute coordinates, divided once: the reference's per-slice means.
    xs = (per_xz * (np.arange(mask.shape[0]) + x0)[:, None]).sum(axis=0)[zs]
    ys = (per_yz * (np.arange(mask.shape[1]) + y0)[:, None]).sum(axis=0)[zs]
    x_mean, y_mean = xs / counts[zs], ys / counts[zs]
    zs = zs + z0
    z_ref = np.arange(zs[0], zs[-1] + 1)
    if zs.size == 1:  # the reference's spline fit fails here too
        raise LabelingError("the spinal canal spans a single axial slice: levels cannot be placed")
    k = 3 if zs.size > 3 else 1
    s = (zs.size / z_ref.size) ** 2 * SMOOTHING / 3.0
    fitted_x = interpolate.splev(z_ref, interpolate.splrep(zs, x_mean, k=k, s=s))
    fitted_y = interpolate.splev(z_ref, interpolate.splrep(zs, y_mean, k=k, s=s))
    return np.stack([fitted_x, fitted_y, z_ref.astype(np.float64)], axis=1)


def _nearest_voxel(coords: np.ndarray, tree: cKDTree, points: np.ndarray) -> np.ndarray:
    """The voxel of `coords` nearest to any of `points`; the first in C order wins a tie.

    The KD-tree finds the candidates; exact ties are then settled on the few candidates with
    the same arithmetic a brute-force search would use.
    """
    dist, _ = tree.query(coords)
    best = dist.min()
    cand = coords[dist <= best * (1 + TIE_TOLERANCE) + TIE_TOLERANCE]
    exact = np.sqrt(((cand[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    return cand[int(np.argmin(exact))]


def _nearest_point(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The point of `points` nearest to `target` (first on a tie)."""
    return points[int(np.argmin(np.sqrt(((points - target) ** 2).sum(axis=1))))]


def extract_levels(
    seg: np.ndarray,
    canal_labels: Sequence[int] = (1, 2),
    disc_labels: Sequence[int] = LEVEL_DISCS,
    c1_label: int = 11,
    c2_label: int = 50,
) -> np.ndarray:
    """One marker voxel per disc at its posterior tip, plus C1 and C1-C2 (§2.6, §4.6).

    `seg` is a labelled map on the 1 mm RAS grid; the result is uint8 on the same grid. Disc
    markers are numbered consecutively over the discs present, from 3 + the position of the
    first present one in `disc_labels`.
    """
    # find_objects gives every label's box in one pass, without a full-size copy.
    objects = ndimage.find_objects(seg)
    boxes = {lab: obj for lab, obj in enumerate(objects, start=1) if obj is not None}
    canal_boxes = [boxes[lab] for lab in canal_labels if lab in boxes]
    if not canal_boxes:
        raise LabelingError("no spinal canal or cord in the segmentation: levels cannot be placed")
    box = tuple(
        slice(min(b[a].start for b in canal_boxes), max(b[a].stop for b in canal_boxes))
        for a in range(3)
    )
    centre = canal_centreline(label_mask(seg[box], canal_labels), [s.start for s in box])
    discs = [lab for lab in disc_labels if lab in boxes]
    if not discs:
        raise LabelingError("no intervertebral disc in the segmentation: levels cannot be placed")
    tree = cKDTree(centre)
    out = np.zeros(seg.shape, dtype=np.uint8)
    first_level = FIRST_DISC_LEVEL + list(disc_labels).index(discs[0])
    c23 = None
    for level, lab in enumerate(discs, start=first_level):
        obj = boxes[lab]
        local = np.nonzero(seg[obj] == lab)
        coords = np.stack([c + s.start for c, s in zip(local, obj, strict=True)], axis=1)
        tip = _nearest_voxel(coords, tree, centre)
        out[tuple(tip)] = level
        if level == FIRST_DISC_LEVEL:
            c23 = tip
    if c23 is not None and c1_label in boxes and c2_label in boxes:
        _mark_c1(seg, out, boxes[c1_label], centre, c23, c1_label, c2_label)
    return out


def _mark_c1(
    seg: np.ndarray,
    out: np.ndarray,
    c1_box: tuple[slice, ...],
    centre: np.ndarray,
    c23: np.ndarray,
    c1_label: int,
    c2_label: int,
) -> None:
    """Write C1 (1) and C1-C2 (2) on the anterior line through the C2-C3 marker (§2.6 step 3)."""
    if int((seg[c1_box] == c1_label).sum()) <= MIN_C1_VOXELS:
        return
    c1_top = c1_box[2].stop - 1
    sagittal = seg[c23[0]]
    ys, zs = np.nonzero(sagittal[:, :c1_top] == c2_label)
    if zs.size == 0:
        return
    i = int(np.argmax(zs))
    top = np.array([c23[0], ys[i], zs[i]])
    line = centre.copy()
    line[:, :2] += c23[:2] - _nearest_point(centre, c23)[:2]
    line = np.round(line).astype(np.int64)
    for marker, target in ((C1_MARKER, top), (C1_C2_MARKER, (top + c23) // 2)):
        point = _nearest_point(line, target)
        if np.all((point >= 0) & (point < seg.shape)):
            out[tuple(point)] = marker


def extract_alternate(
    seg: np.ndarray, labels: Sequence[int] = range(63, 101), start: int = 0
) -> np.ndarray:
    """Binary mask (uint8) of every other disc present, the step-2 second channel (§2.8).

    The present labels of `labels` are sorted; those at positions start, start+2, ... are 1.
    `start=1` gives the complementary parity (used for training data). Same grid as `seg`.
    """
    found = ndimage.find_objects(seg)
    present = [lab for lab in sorted(set(labels)) if 0 < lab <= len(found) and found[lab - 1]]
    return label_mask(seg, present[start::2]).view(np.uint8)
