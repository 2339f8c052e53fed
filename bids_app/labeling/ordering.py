"""Superior-to-inferior ordering of components along the canal (docs/method.md §3.1).

All arrays here are on the working grid of `iterative_label` (a crop of the 1 mm RAS grid:
axis 0 = x, axis 1 = y = anterior, axis 2 = z = superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_app.labeling.errors import LabelingError


@dataclass(frozen=True)
class Canal:
    """Canal geometry used to place each component at a height of the spine."""

    points: np.ndarray  # (n, 3) int64 centreline voxels, in C order of (x, y, z)
    mid_y: np.ndarray  # per z-slice (min y + max y) // 2 of the canal, -1 where it has none


def canal_geometry(mask: np.ndarray) -> Canal:
    """Centreline voxels and per-slice anterior threshold of a canal (canal ∪ cord) mask.

    A slice contributes the voxel at the middle of the canal's x- and y-extent, only if that
    voxel is itself canal, so a slice gives 0 or 1 points.
    """
    x_hit = np.asarray(mask.any(axis=1))  # (nx, nz)
    y_hit = np.asarray(mask.any(axis=0))  # (ny, nz)
    has = x_hit.any(axis=0)
    if not has.any():
        raise LabelingError(
            "no spinal canal or cord in the segmentation: discs cannot be ordered along the spine"
        )
    nx, ny = mask.shape[0], mask.shape[1]
    x_mid = (np.argmax(x_hit, axis=0) + (nx - 1 - np.argmax(x_hit[::-1], axis=0))) // 2
    y_mid = (np.argmax(y_hit, axis=0) + (ny - 1 - np.argmax(y_hit[::-1], axis=0))) // 2
    zs = np.flatnonzero(has)
    on_canal = mask[x_mid[zs], y_mid[zs], zs]
    points = np.stack([x_mid[zs][on_canal], y_mid[zs][on_canal], zs[on_canal]], axis=1)
    if points.size == 0:
        raise LabelingError(
            "the spinal canal has no centreline (its middle is never inside it): "
            "discs cannot be ordered along the spine"
        )
    points = points[np.lexsort((points[:, 2], points[:, 1], points[:, 0]))].astype(np.int64)
    return Canal(points=points, mid_y=np.where(has, y_mid, -1))


def nearest_z(canal: Canal, point: np.ndarray) -> int:
    """Height (z) of the centreline voxel nearest to `point`; the first one wins a tie.

    A NaN point picks the first centreline voxel, as numpy's argmin does in the reference.
    """
    dist = np.sqrt(((canal.points - point) ** 2).sum(axis=1))
    return int(canal.points[int(np.argmin(dist)), 2])


def component_heights(labelled: np.ndarray, canal: Canal) -> dict[int, int]:
    """Height of every id present in `labelled`, with the reference's id-1 quirk (§3.1).

    Each id sits at the z of the centreline voxel nearest to its centroid. The reference
    meant to use the part anterior to the canal, but in effect only id 1 is changed: it gets
    the z nearest to the centroid of its anterior part, or of the first centreline voxel when
    it has no anterior part, provided some id has anterior voxels.
    """
    heights: dict[int, int] = {}
    anterior_count: dict[int, int] = {}
    anterior_centroid_1 = None
    for cid, obj in enumerate(ndimage.find_objects(labelled), start=1):
        if obj is None:
            continue
        local = np.nonzero(labelled[obj] == cid)
        coords = [c + s.start for c, s in zip(local, obj, strict=True)]
        heights[cid] = nearest_z(canal, centroid(coords))
        anterior = coords[1] > canal.mid_y[coords[2]]
        anterior_count[cid] = int(anterior.sum())
        if cid == 1 and anterior_count[cid]:
            anterior_centroid_1 = centroid([c[anterior] for c in coords])
    if 1 in heights and any(anterior_count.values()):
        if anterior_centroid_1 is None:
            heights[1] = int(canal.points[0, 2])
        else:
            heights[1] = nearest_z(canal, anterior_centroid_1)
    return heights


def centroid(coords: list[np.ndarray]) -> np.ndarray:
    """Unweighted centroid; integer sums are exact, so the result does not depend on order."""
    return np.array([c.sum(dtype=np.int64) for c in coords], dtype=np.float64) / coords[0].size


def si_order(heights: dict[int, int]) -> list[int]:
    """Ids from superior to inferior: by (z, id) descending, so the larger id wins a tie."""
    return sorted(heights, key=lambda cid: (heights[cid], cid), reverse=True)
