"""Iterative landmark labeling (docs/method.md §3) on hand-made step-1 / step-2 raw maps."""

from __future__ import annotations

import numpy as np
import pytest
from synth_spine import C7T1, FULL_DISCS, GENERIC_DISC, L5S, T12L1, draw_column, raw_discs

from bids_app.labeling import (
    LabelingError,
    LabelingOutput,
    iterative_label,
    label_step1,
    label_step2,
)
from bids_app.labeling.components import CUBE
from bids_app.labeling.ordering import canal_geometry, component_heights

DEF = list(FULL_DISCS)  # 63-67, 71-82, 91-95, 100
C2C3_RAW = 2


@pytest.mark.parametrize("landmarks", [(63, 71, 91, 100), (63, 100)], ids=["all", "ends"])
@pytest.mark.parametrize("bend", [(0.0, 0.0), (10.0, 6.0)], ids=["straight", "curved"])
def test_full_column_counts_from_c2c3_and_l5s(landmarks, bend):
    col = draw_column(raw_discs(FULL_DISCS, landmarks), curve=bend[0], lateral=bend[1])
    out = label_step1(col.seg)
    assert isinstance(out, LabelingOutput)
    assert out.labels.dtype == np.uint8 and out.labels.shape == col.seg.shape
    assert col.disc_labels(out.labels) == DEF
    assert out.landmarks == ["C2-C3", "L5-S"]
    # Step 1 names only C1; every other bone (sacrum included) is 50.
    assert col.vertebra_labels(out.labels) == [11] + [50] * 24


def test_step1_canal_and_cord_are_mapped():
    col = draw_column(raw_discs(FULL_DISCS))
    out = label_step1(col.seg).labels
    assert set(np.unique(out[col.seg == 9])) == {1}
    assert set(np.unique(out[col.seg == 8])) == {2}
    assert out[col.canal_voxel()] == 2


@pytest.mark.parametrize(
    ("kept", "name"), [((71,), "C7-T1"), ((91,), "T12-L1")], ids=["c7t1", "t12l1"]
)
def test_single_middle_landmark_counts_both_ways(kept, name):
    col = draw_column(raw_discs(FULL_DISCS, kept), curve=8.0)
    out = label_step1(col.seg)
    # Above the landmark the default region sizes apply, below it the maximum ones (6 lumbar
    # slots), so without an L5-S class the bottom disc of a normal spine is called L5-L6.
    assert col.disc_labels(out.labels) == [*DEF[:-1], 96]
    assert out.landmarks == [name]


def test_lumbar_only_counts_up_from_l5s():
    discs = FULL_DISCS[-9:]  # T9-T10 ... L5-S
    col = draw_column(raw_discs(discs, (100,)), vertebrae_above=1)
    out = label_step1(col.seg)
    assert col.disc_labels(out.labels) == [80, 81, 82, 91, 92, 93, 94, 95, 100]
    assert out.landmarks == ["L5-S"]


def test_missing_discs_count_down_from_c2c3_and_l5s_reanchors():
    col = draw_column([C2C3_RAW] + [GENERIC_DISC] * 11 + [L5S])  # 13 discs in all
    out = label_step1(col.seg)
    assert col.disc_labels(out.labels) == [63, 64, 65, 66, 67, *range(71, 78), 100]


def test_six_lumbar_discs_give_l5_l6():
    discs = [C2C3_RAW] + [GENERIC_DISC] * 22 + [L5S]  # 24 discs
    out = label_step1(draw_column(discs).seg)
    col = draw_column(discs)
    assert col.disc_labels(out.labels) == [*DEF[:-1], 96, 100]


def _lumbar_with_sacral_disc(sacral_voxels: int):
    """T12-L1 ... L5-S (2304 voxels each) and a generic disc below L5-S."""
    discs = [T12L1] + [GENERIC_DISC] * 4 + [L5S, GENERIC_DISC]
    col = draw_column(discs, disc_size=(24, 16, 6), vertebra_height=6, vertebrae_above=1)
    col.set_disc(6, sacral_voxels)
    return col


def test_small_disc_below_l5s_keeps_l5s():
    # 210 voxels <= 10 % of the 2304 L5-S voxels: L5-S stays the anchor (PR #146).
    col = _lumbar_with_sacral_disc(210)
    out = label_step1(col.seg)
    assert out.landmarks == ["L5-S"]
    assert col.disc_labels(out.labels) == [91, 92, 93, 94, 95, 100, 0]


def test_big_disc_below_l5s_drops_l5s():
    # 400 voxels > 10 %: the L5-S class is distrusted, T12-L1 anchors, the bottom becomes 100.
    col = _lumbar_with_sacral_disc(400)
    out = label_step1(col.seg)
    assert out.landmarks == ["T12-L1"]
    assert col.disc_labels(out.labels) == [91, 92, 93, 94, 95, 96, 100]


def test_localizer_gives_the_numbering_and_wins_over_landmark_classes():
    discs = FULL_DISCS[3:13]  # C5-C6 ... T6-T7
    col = draw_column([C2C3_RAW] + [GENERIC_DISC] * 9, vertebrae_above=1)  # a wrong C2-C3
    loc = col.paint_discs([0, 0, 71, 72, 0, 0, 0, 0, 0, 0])  # a partial localizer
    out = label_step1(col.seg, loc=loc)
    assert col.disc_labels(out.labels) == list(discs)
    assert out.landmarks == ["localizer C7-T1"]


def test_localizer_without_landmark_disc_uses_most_superior_overlap():
    col = draw_column([GENERIC_DISC] * 8, vertebrae_above=1)
    loc = col.paint_discs([0, 0, 75, 76, 0, 0, 0, 0])
    out = label_step1(col.seg, loc=loc)
    assert col.disc_labels(out.labels) == [73, 74, 75, 76, 77, 78, 79, 80]
    assert out.landmarks == ["localizer T4-T5"]


def test_empty_localizer_falls_back_to_c2c3_and_l5s():
    col = draw_column(raw_discs(FULL_DISCS))
    out = label_step1(col.seg, loc=np.zeros_like(col.seg))
    assert out.landmarks == ["C2-C3", "L5-S"]
    assert col.disc_labels(out.labels) == DEF


def test_localizer_fallback_ignores_middle_landmarks():
    col = draw_column(raw_discs(FULL_DISCS, (71,)))
    with pytest.raises(LabelingError, match=r"C2-C3 or L5-S\) found and the localizer"):
        label_step1(col.seg, loc=np.zeros_like(col.seg))


def test_no_landmark_is_a_clear_error():
    col = draw_column([GENERIC_DISC] * 10)
    with pytest.raises(LabelingError) as err:
        label_step1(col.seg)
    assert str(err.value) == (
        "no landmark disc (C2-C3, C7-T1, T12-L1 or L5-S) found and no localizer given: "
        "levels cannot be assigned; use a localizer (--localizer-suffix, or --loc for "
        "`spineseg segment`) or --assume-top-disc (e.g. C2-C3 when the scan starts at C1)"
    )
    assert isinstance(err.value, ValueError)


def test_assumed_top_disc_numbers_from_the_most_superior_disc():
    # Off by default (as in the reference); asked for, the top disc becomes C2-C3 and the
    # rest count down from it, and the landmark name says it was an assumption.
    col = draw_column([GENERIC_DISC] * 10)
    out = label_step1(col.seg, top_disc=63)
    assert col.disc_labels(out.labels) == [63, 64, 65, 66, 67, 71, 72, 73, 74, 75]
    assert out.landmarks == ["assumed top disc C2-C3"]


def test_missing_canal_and_missing_discs_are_errors():
    col = draw_column(raw_discs(FULL_DISCS[:5]))
    no_canal = np.where(np.isin(col.seg, (8, 9)), 0, col.seg).astype(np.uint8)
    with pytest.raises(LabelingError, match="no spinal canal"):
        label_step1(no_canal)
    no_discs = np.where(col.seg <= 5, 0, col.seg).astype(np.uint8)
    with pytest.raises(LabelingError, match="no intervertebral disc"):
        label_step1(no_discs)
    with pytest.raises(LabelingError, match="empty"):
        label_step1(np.zeros((5, 5, 5), np.uint8))


def test_landmark_outside_every_disc_numbers_nothing():
    # Parity with the reference: the C7-T1 class lies only in fragments too small to be
    # discs, so its "host" is the background and no disc can be numbered (no error either).
    col = draw_column([GENERIC_DISC] * 8, vertebrae_above=1)
    for z in (10, 25, 40):
        col.seg[0:5, 40:45, z : z + 6] = C7T1  # 150 voxels each, 450 in all
    out = label_step1(col.seg)
    assert out.landmarks == []
    assert col.disc_labels(out.labels) == [0] * 8
    assert set(np.unique(out.labels)) == {0, 1, 2, 50}


def test_small_disc_fragments_are_dropped():
    col = draw_column(raw_discs(FULL_DISCS[:6]))
    col.set_disc(2, 199)  # below the 200-voxel minimum component size
    out = label_step1(col.seg)
    assert col.disc_labels(out.labels) == [63, 64, 0, 65, 66, 67]


def test_caller_lists_are_not_mutated():
    col = draw_column([GENERIC_DISC] * 3 + [C7T1] + [GENERIC_DISC] * 3)
    selected = [2, 5, 3, 4]
    out = iterative_label(
        col.seg,
        disc_labels=[1, 2, 3, 4, 5],
        disc_landmark_labels=[2, 3, 4, 5],
        disc_landmark_output_labels=[63, 71, 91, 100],
        selected_disc_landmarks=selected,
        canal_labels=[8],
        cord_labels=[9],
    )
    assert selected == [2, 5, 3, 4]
    assert col.disc_labels(out.labels) == [*range(65, 68), 71, 72, 73, 74]


def test_only_component_one_gets_the_anterior_refinement():
    """The reference's §3.1 quirk: id 1's height comes from its anterior part (or the first
    centreline voxel when it has none); other ids keep their whole-centroid height."""
    canal = np.zeros((20, 30, 40), bool)
    canal[8:13, 8:13, :] = True  # y middle 10: anterior is y > 10
    labelled = np.zeros(canal.shape, np.int32)
    labelled[0:3, 20:24, 0:4] = 1  # id 1, anterior part low ...
    labelled[0:3, 2:6, 30:40] = 1  # ... and a bigger posterior part high
    labelled[15:18, 20:24, 20:22] = 2  # id 2, anterior part around z 20.5 ...
    labelled[15:18, 2:6, 34:36] = 2  # ... and a posterior part as big around z 34.5
    geometry = canal_geometry(canal)
    heights = component_heights(labelled, geometry)
    assert heights[1] == 1  # anterior centroid z 1.5 -> nearest centreline voxel z 1
    assert heights[2] == 27  # whole centroid z 27.5 -> z 27 (the first wins the tie)

    labelled[0:3, 20:24, 0:4] = 0  # id 1 now has no anterior voxel: first centreline voxel
    assert component_heights(labelled, geometry)[1] == int(geometry.points[0, 2]) == 0
    assert geometry.points[0].tolist() == [10, 10, 0]


def test_scipy_label_order_is_what_the_quirk_relies_on():
    from scipy import ndimage

    mask = np.zeros((6, 6, 6), bool)
    mask[4, 0, 0] = mask[1, 5, 5] = True
    labelled, _ = ndimage.label(mask, CUBE)
    assert labelled[1, 5, 5] == 1  # smallest x first, whatever y and z


VERTEBRAE_FULL = [11, 12, *range(13, 18), *range(21, 33), *range(41, 46), 50]


@pytest.mark.parametrize("bend", [(0.0, 0.0), (12.0, -6.0)], ids=["straight", "curved"])
def test_step2_numbers_every_vertebra(bend):
    col = draw_column(raw_discs(FULL_DISCS), step=2, curve=bend[0], lateral=bend[1])
    out = label_step2(col.seg)
    assert col.disc_labels(out.labels) == DEF
    assert col.vertebra_labels(out.labels) == VERTEBRAE_FULL  # C1=11, C2=12, ..., sacrum 50
    assert out.landmarks == ["C2-C3", "L5-S"]
    assert set(np.unique(out.labels[col.seg == 11])) == {1}
    assert set(np.unique(out.labels[col.seg == 10])) == {2}


def test_step2_lumbar_only():
    discs = FULL_DISCS[-6:]  # T12-L1 ... L5-S
    col = draw_column(raw_discs(discs, (100,)), step=2, vertebrae_above=1)
    out = label_step2(col.seg)
    assert col.disc_labels(out.labels) == list(discs)
    assert col.vertebra_labels(out.labels) == [32, 41, 42, 43, 44, 45, 50]


def test_step2_generic_vertebra_voxels_join_their_vertebra():
    col = draw_column(raw_discs(FULL_DISCS), step=2)
    t5 = col.vertebra_boxes[VERTEBRAE_FULL.index(25)]
    x, y, z = (s.start for s in t5)
    col.seg[x + 3 : x + 10, y + 3 : y + 9, z + 1 : z + 4] = 6  # unsure core of the body
    col.seg[x : x + 14, y : y + 12, z - 1] = 6  # and a generic slice just below it
    out = label_step2(col.seg)
    assert set(np.unique(out.labels[t5])) == {25}
    assert set(np.unique(out.labels[x : x + 14, y : y + 12, z - 1])) == {25}
    assert col.vertebra_labels(out.labels) == VERTEBRAE_FULL


def test_step2_split_vertebra_is_merged():
    col = draw_column(raw_discs(FULL_DISCS), step=2, vertebra_height=7)
    l2 = col.vertebra_boxes[VERTEBRAE_FULL.index(42)]
    col.seg[l2[0], l2[1], l2[2].start + 3] = 0  # a 1-voxel cleft; the halves stay one class
    col.seg[l2[0], l2[1], l2[2].start + 2] = 0  # two slices apart: dilation no longer joins
    out = label_step2(col.seg)
    assert set(np.unique(out.labels[l2])) == {0, 42}
    assert col.vertebra_labels(out.labels) == VERTEBRAE_FULL


def test_step2_sacrum_label_wins_everywhere():
    col = draw_column(raw_discs(FULL_DISCS), step=2)
    col.seg[0:2, 0:2, 0:2] = 9  # a stray sacrum speck far from the spine
    out = label_step2(col.seg)
    assert out.labels[0, 0, 0] == 50
