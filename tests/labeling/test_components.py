"""Bounding boxes, masks and the largest-component clean-up (docs/method.md §2.2, §2.7)."""

from __future__ import annotations

import numpy as np

from bids_app.labeling import bbox_slices, largest_component
from bids_app.labeling.components import axis_spans, label_mask


def test_bbox_slices_widens_and_clips():
    seg = np.zeros((30, 40, 50), np.uint8)
    seg[5:10, 20:25, 40:48] = 3
    assert bbox_slices(seg, margin=10) == (slice(0, 20), slice(10, 35), slice(30, 50))
    assert bbox_slices(seg, margin=0) == (slice(5, 10), slice(20, 25), slice(40, 48))
    assert bbox_slices(np.zeros_like(seg)) is None


def test_largest_component_keeps_the_spine_and_near_pieces():
    seg = np.zeros((40, 40, 80), np.uint8)
    seg[10:30, 10:30, 10:50] = 6  # the spine
    seg[12:14, 12:14, 55:57] = 63  # 5 voxels above it: joined by the 5-voxel dilation
    seg[12:14, 12:14, 70:72] = 2  # 20 voxels away: removed
    seg[0:3, 35:40, 0:3] = 9  # far in a corner: removed
    out = largest_component(seg)
    assert out.dtype == seg.dtype and out.shape == seg.shape
    expected = seg.copy()
    expected[12:14, 12:14, 70:72] = 0
    expected[0:3, 35:40, 0:3] = 0
    np.testing.assert_array_equal(out, expected)


def test_largest_component_joins_all_labels_and_breaks_ties_by_scan_order():
    seg = np.zeros((30, 10, 10), np.uint8)
    seg[2:5, 2:5, 2:5] = 1
    seg[20:23, 2:5, 2:5] = 2  # same size, later in C order: loses the tie
    out = largest_component(seg)
    assert set(np.unique(out)) == {0, 1}
    assert not largest_component(np.zeros((4, 4, 4), np.uint8)).any()


def test_label_mask_matches_isin_for_every_dtype():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        seg = rng.integers(0, 120, size=(6, 7, 8)).astype(dtype)
        np.testing.assert_array_equal(label_mask(seg, [3, 63, 100]), np.isin(seg, [3, 63, 100]))


def test_axis_spans_fill_between_first_and_last_voxel_of_each_line():
    mask = np.zeros((5, 5, 1), bool)
    mask[0, 2, 0] = mask[4, 2, 0] = True  # the ends of an x-line
    mask[2, 0, 0] = mask[2, 4, 0] = True  # the ends of a y-line
    plus = np.zeros_like(mask)
    plus[:, 2, 0] = plus[2, :, 0] = True
    np.testing.assert_array_equal(axis_spans(mask), plus)
