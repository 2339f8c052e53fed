"""Spinal canal clean-up and the soft cord/canal maps (docs/method.md §2.4, §2.5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from bids_app.labeling.components import CROSS, CUBE, bbox_slices, label_mask, span_along
from bids_app.labeling.errors import LabelingError


def _largest_only(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of `mask` (lowest id on a tie)."""
    labelled, n = ndimage.label(mask, CUBE)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def fill_canal(seg: np.ndarray, canal_label: int = 2, cord_label: int = 1) -> np.ndarray:
    """Clean the canal and fill it axially around the cord (§2.4, largest canal and cord).

    Stray cord pieces become canal, stray canal/cord pieces are removed, then every voxel
    inside the canal's x-span and y-span of its axial slice becomes canal unless it is cord,
    overwriting any other label there. Returns a new array on `seg`'s grid, same dtype.
    """
    out = seg.copy()
    box = bbox_slices(label_mask(seg, (canal_label, cord_label)), margin=0)
    if box is None:
        return out
    sub = out[box]  # a view: edits land in `out`
    cord = sub == cord_label
    if cord.any():
        sub[cord & ~_largest_only(cord)] = canal_label
    canal = (sub == canal_label) | (sub == cord_label)
    sub[canal & ~_largest_only(canal)] = 0
    canal = (sub == canal_label) | (sub == cord_label)
    inside = span_along(canal, 0) & span_along(canal, 1)
    sub[inside & (sub != cord_label)] = canal_label
    return out


def extract_soft(
    prob: np.ndarray, seg: np.ndarray, seg_labels: Sequence[int], dilate: int = 1
) -> np.ndarray:
    """Soft map of one region, kept only near its hard label (§2.5).

    `prob` is the network's probability for the region, already on `seg`'s grid in (x, y, z)
    order. Voxels farther than `dilate` voxels (6-connected steps) from `seg ∈ seg_labels`
    are set to 0. Returns float32 on `seg`'s grid.
    """
    if prob.shape != seg.shape:
        raise LabelingError(
            f"probability map shape {prob.shape} does not match segmentation shape {seg.shape}"
        )
    out = np.zeros(seg.shape, dtype=np.float32)
    box = bbox_slices(label_mask(seg, seg_labels), margin=dilate)
    if box is None:
        return out
    near = label_mask(seg[box], seg_labels)
    if dilate > 0:
        near = ndimage.binary_dilation(near, CROSS, iterations=dilate)
    out[box] = np.where(near, prob[box], 0)
    return out
