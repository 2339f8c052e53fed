"""Level markers and the alternate-disc mask (docs/method.md §2.6, §2.8, §4.6)."""

from __future__ import annotations

import numpy as np
import pytest
from synth_spine import FULL_DISCS, draw_column, raw_discs

from bids_app.labeling import (
    LabelingError,
    extract_alternate,
    extract_levels,
    fill_canal,
    label_step1,
)


@pytest.fixture(scope="module")
def labelled():
    """A final step-1 map of a straight full spine, and the column it was drawn from."""
    col = draw_column(raw_discs(FULL_DISCS))
    return col, fill_canal(label_step1(col.seg).labels)


def _markers(levels: np.ndarray) -> dict[int, tuple[int, int, int]]:
    points = np.argwhere(levels)
    assert len(points) == len(np.unique(levels)) - 1, "one voxel per level"
    return {int(levels[tuple(p)]): tuple(int(v) for v in p) for p in points}


def test_one_marker_per_disc_at_its_posterior_tip(labelled):
    col, seg = labelled
    levels = extract_levels(seg)
    assert levels.dtype == np.uint8 and levels.shape == seg.shape
    markers = _markers(levels)
    assert sorted(markers) == list(range(1, 26))
    for value, box in enumerate(col.disc_boxes, start=3):
        x, y, z = markers[value]
        assert seg[x, y, z] == FULL_DISCS[value - 3]
        assert y == box[1].start  # the disc face nearest the canal
        assert x == seg.shape[0] // 2  # straight in front of the canal centre


def test_c1_markers_sit_above_c2c3(labelled):
    _, seg = labelled
    markers = _markers(extract_levels(seg))
    assert markers[1][2] > markers[2][2] > markers[3][2]


def test_missing_disc_shifts_the_numbering_below_it(labelled):
    _, seg = labelled
    seg = seg.copy()
    seg[seg == 65] = 0
    markers = _markers(extract_levels(seg))
    assert sorted(markers) == list(range(1, 25))
    assert seg[markers[5]] == 66 and seg[markers[24]] == 100


def test_numbering_starts_at_the_first_present_disc(labelled):
    _, seg = labelled
    seg = seg.copy()
    seg[(seg == 63) | (seg == 64)] = 0
    markers = _markers(extract_levels(seg))
    assert sorted(markers) == list(range(5, 26))  # no C2-C3: no C1 / C1-C2 markers either
    assert seg[markers[5]] == 65


def test_extract_levels_errors(labelled):
    _, seg = labelled
    with pytest.raises(LabelingError, match="no spinal canal"):
        extract_levels(np.where(seg <= 2, 0, seg).astype(np.uint8))
    with pytest.raises(LabelingError, match="no intervertebral disc"):
        extract_levels(np.where(seg >= 63, 0, seg).astype(np.uint8))


def test_extract_alternate_both_parities():
    seg = np.zeros((4, 4, 8), np.uint8)
    for z, lab in enumerate((1, 50, 63, 64, 65, 67, 71, 96)):
        seg[..., z] = lab
    first = extract_alternate(seg)
    second = extract_alternate(seg, start=1)
    assert first.dtype == np.uint8 and first.shape == seg.shape
    # Present discs 63, 64, 65, 67, 71, 96: parity over what is present, not anatomy.
    assert [int(first[0, 0, z]) for z in range(8)] == [0, 0, 1, 0, 1, 0, 1, 0]
    assert [int(second[0, 0, z]) for z in range(8)] == [0, 0, 0, 1, 0, 1, 0, 1]
    assert not extract_alternate(np.zeros_like(seg)).any()
