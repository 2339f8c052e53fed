"""Connected components, bounding boxes and hole filling (docs/method.md §2.2, §2.7, §3.1).

Every function here works on the bounding box of the voxels it cares about, so memory grows
with the size of the spine, not with the field of view. Component ids come from
`scipy.ndimage.label`, whose C-order numbering the labeling rules depend on (§3.1).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

# 6-connected cross (dilation) and full 3x3x3 cube (26-connectivity labelling).
CROSS = ndimage.generate_binary_structure(3, 1)
CUBE = ndimage.generate_binary_structure(3, 3)

Box = tuple[slice, slice, slice]


def bbox_slices(seg: np.ndarray, margin: int = 10) -> Box | None:
    """Bounding box of the non-zero voxels of `seg`, widened by `margin` and clipped (§2.7).

    Returns index slices on `seg`'s own grid, or None when `seg` is empty. Works from the
    three axis projections, so it allocates only 2-D arrays.
    """
    box = []
    for axis in range(seg.ndim):
        others = tuple(a for a in range(seg.ndim) if a != axis)
        hits = np.flatnonzero(np.any(seg, axis=others))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, seg.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def grow_box(obj: Box, shape: tuple[int, ...], margin: int) -> Box:
    """Widen a bounding box by `margin` voxels on each side, clipped to `shape`."""
    return tuple(  # type: ignore[return-value]
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(obj, shape, strict=True)
    )


def label_mask(seg: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """Boolean mask of `seg ∈ labels`, same shape and grid as `seg`.

    For 8/16-bit label maps a lookup table allocates only the 1-byte result (np.isin would
    allocate three times that).
    """
    labels = [int(v) for v in labels]
    if seg.dtype.kind == "u" and seg.dtype.itemsize <= 2:
        lut = np.zeros(1 << (8 * seg.dtype.itemsize), dtype=bool)
        lut[[v for v in labels if 0 <= v < lut.size]] = True
        return lut[seg]
    return np.isin(seg, labels)


def label_components(mask: np.ndarray, dilate: int = 1) -> tuple[np.ndarray, int]:
    """26-connected components of `mask` after a 6-connected dilation, restricted to `mask`.

    Dilating first joins pieces that are at most `dilate` voxels (L1) apart; ids follow
    `scipy.ndimage.label`'s C-order scan of the dilated mask. Returns an int32 array the
    shape of `mask` (0 outside `mask`) and the number of ids.
    """
    grown = ndimage.binary_dilation(mask, CROSS, iterations=dilate) if dilate > 0 else mask
    labelled, n = ndimage.label(grown, CUBE)
    labelled[~mask] = 0
    return labelled, int(n)


def drop_small(labelled: np.ndarray, n: int, min_size: int) -> int:
    """Remove components with fewer than `min_size` voxels and renumber the rest 1..k in place.

    Keeps the relative order of the ids, so the C-order meaning of id 1 survives.
    """
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    remap = np.zeros(n + 1, dtype=labelled.dtype)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labelled.dtype)
    np.take(remap, labelled, out=labelled)
    return int(keep.sum())


def largest_component(seg: np.ndarray, dilate: int = 5) -> np.ndarray:
    """Keep only the largest spine blob of a raw network output (§2.2).

    All non-zero voxels are one mask; pieces within `dilate` voxels (L1) of each other count
    as connected. The component with the most voxels wins (lowest id on a tie) and keeps its
    original labels. Same grid and dtype as `seg`.
    """
    out = np.zeros_like(seg)
    box = bbox_slices(seg, margin=dilate + 1)
    if box is None:
        return out
    sub = seg[box]
    labelled, n = label_components(sub != 0, dilate)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = int(np.argmax(sizes))
    out[box] = np.where(labelled == keep, sub, 0)
    return out


def axis_spans(mask: np.ndarray) -> np.ndarray:
    """Voxels lying between the first and last voxel of `mask` on their x-, y- or z-line.

    The union of the three axis-wise spans (§3.1 hole fill). Call it on a bounding box: a
    voxel outside the box of `mask` can never be inside a span.
    """
    filled = np.zeros_like(mask)
    for axis in range(mask.ndim):
        filled |= span_along(mask, axis)
    return filled


def span_along(mask: np.ndarray, axis: int) -> np.ndarray:
    """True where a voxel has a `mask` voxel at or before it and at or after it along `axis`."""
    before = np.logical_or.accumulate(mask, axis=axis)
    after = np.flip(np.logical_or.accumulate(np.flip(mask, axis), axis=axis), axis)
    return before & after
