"""Memory stays bounded on a realistic field of view (the reference's brute-force disc search
forms a disc-voxels x centreline-points x 3 float64 array, hundreds of MB per scan)."""

from __future__ import annotations

import tracemalloc

import numpy as np
from synth_spine import FULL_DISCS, draw_column, raw_discs

from bids_app.labeling import extract_levels, fill_canal, label_step1, label_step2


def _big_column(step: int):
    # 160 x 160 x 600 voxels (15 MB as uint8), discs of 40 x 30 x 6 voxels.
    col = draw_column(
        raw_discs(FULL_DISCS),
        step=step,
        shape_xy=(160, 160),
        disc_size=(40, 30, 6),
        vertebra_height=18,
        curve=20.0,
        lateral=10.0,
    )
    assert col.seg.shape == (160, 160, 600)
    return col


def _peak_bytes(func, *args):
    tracemalloc.start()
    try:
        result = func(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_labeling_and_levels_memory_is_bounded():
    col = _big_column(step=2)
    seg = col.seg
    out, label_peak = _peak_bytes(label_step2, seg)
    assert col.disc_labels(out.labels) == list(FULL_DISCS)
    # The output alone is one byte per voxel; int32 component maps live on the spine's box.
    assert label_peak < 4 * seg.nbytes

    labelled = fill_canal(label_step1(_big_column(step=1).seg).labels)
    levels, levels_peak = _peak_bytes(extract_levels, labelled)
    assert np.unique(levels).tolist() == list(range(26))

    disc_voxels = max(int((labelled == lab).sum()) for lab in FULL_DISCS)
    canal_slices = int(np.any(np.isin(labelled, (1, 2)), axis=(0, 1)).sum())
    all_pairs = disc_voxels * canal_slices * 3 * 8
    assert all_pairs > 90e6  # what the brute-force search would allocate for one disc
    assert levels_peak < all_pairs / 4
    assert levels_peak < 1.5 * seg.nbytes  # essentially the uint8 output itself
