"""Canal clean-up and soft maps (docs/method.md §2.4, §2.5)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.labeling import LabelingError, extract_soft, fill_canal

CORD, CANAL, BONE = 1, 2, 50


def _canal_tube() -> np.ndarray:
    seg = np.zeros((20, 20, 30), np.uint8)
    seg[5:15, 5:15, 2:28] = CANAL
    seg[8:12, 8:12, 2:28] = CORD
    return seg


def test_fill_canal_fills_holes_and_overwrites_other_labels_inside():
    seg = _canal_tube()
    seg[6, 6, 10] = 0  # a hole in the canal
    seg[13, 9, 12] = BONE  # bone inside the canal outline
    seg[8:12, 8:12, 5] = 0  # the cord is missing on one slice
    out = fill_canal(seg)
    assert out[6, 6, 10] == CANAL and out[13, 9, 12] == CANAL
    assert (out[8:12, 8:12, 5] == CANAL).all()
    assert (out[8:12, 8:12, 6] == CORD).all()
    assert seg[6, 6, 10] == 0  # the input is left alone


def test_fill_canal_keeps_only_the_largest_canal_and_cord():
    seg = _canal_tube()
    seg[0:2, 0:2, 0:3] = CANAL  # stray canal blob: removed
    seg[6, 6, 20] = CORD  # stray cord speck inside the canal: becomes canal
    seg[17:19, 17:19, 0:2] = BONE  # other labels elsewhere are kept
    out = fill_canal(seg)
    assert not out[0:2, 0:2, 0:3].any()
    assert out[6, 6, 20] == CANAL
    assert (out[17:19, 17:19, 0:2] == BONE).all()


def test_fill_canal_fills_only_within_both_axis_spans():
    seg = np.zeros((9, 9, 1), np.uint8)
    seg[1:8, 4, 0] = CANAL  # a plus sign: its corners are in one span only
    seg[4, 1:8, 0] = CANAL
    out = fill_canal(seg)
    assert out[2, 2, 0] == 0 and out[6, 6, 0] == 0
    assert fill_canal(np.zeros((3, 3, 3), np.uint8)).sum() == 0


def test_extract_soft_keeps_probabilities_near_the_label_only():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[4:6, 4:6, 4:6] = CORD
    prob = np.full(seg.shape, 0.7, np.float64)
    out = extract_soft(prob, seg, (CORD,))
    assert out.dtype == np.float32
    near = out > 0
    assert near[3, 4, 4] and near[4, 4, 6]  # one 6-connected step away
    assert not near[3, 3, 4]  # a diagonal step is too far
    assert near.sum() == 8 + 6 * 4
    assert np.allclose(out[near], 0.7)


def test_extract_soft_rejects_a_grid_mismatch():
    with pytest.raises(LabelingError, match="does not match"):
        extract_soft(np.zeros((3, 3, 3)), np.zeros((3, 3, 4), np.uint8), (1,))
