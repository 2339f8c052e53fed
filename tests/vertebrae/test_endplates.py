"""Endplates read on the image: a label that runs on into the bright disc filling a sunk
endplate is trimmed back to the endplate; a label that already ends there, or whose disc is
darker than the marrow, is left alone."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.vertebrae import heights
from bids_app.vertebrae.endplates import trim_to_image
from bids_app.vertebrae.run import analyse

STEP = 0.25  # mm between section samples, as heights.py reads them
ROWS, COLS = 140, 60
TOP, BOTTOM = 20, 120  # rows of the normal body's ends (cortex included)
CORTEX = 6  # rows of dark cortex at each end (1.5 mm)
SUNK = 24  # rows (6 mm) the superior endplate sinks at the front (a wedge)
# (marrow, disc, cortex) intensities: T1w marrow brighter than disc, T2w the disc brighter.
CONTRASTS = {"T1w": (0.66, 0.34, 0.15), "T2w": (0.38, 0.88, 0.12)}
ALIKE = (0.5, 0.5, 0.15)  # marrow and disc alike: the image cannot tell them apart


def _sink(j: int, sunk: int) -> int:
    """Rows the top of column j sank: none over the back third, sloping down over the middle
    third to `sunk` over the front third (columns run posterior to anterior)."""
    return round(sunk * float(np.clip((j - COLS / 3) / (COLS / 3), 0, 1)))


def _section(contrast: str, sunk: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(image, true body mask) of a section whose top sank as a wedge does (`_sink`), the
    space filled by the disc above."""
    marrow, disc, cortex = CONTRASTS.get(contrast, ALIKE)
    image = np.full((ROWS, COLS), disc)
    body = np.zeros((ROWS, COLS), bool)
    for j in range(COLS):
        top = TOP + _sink(j, sunk)
        body[top:BOTTOM, j] = True
        image[top:BOTTOM, j] = marrow
        image[top : top + CORTEX, j] = cortex
        image[BOTTOM - CORTEX : BOTTOM, j] = cortex
    rng = np.random.default_rng(7)
    return image + rng.normal(0, noise, image.shape), body


def _discs(body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disc labels above and below a body label: 4 mm of disc beyond each of its ends."""
    rows = np.arange(ROWS)[:, None]
    top = np.argmax(body, 0)[None, :]
    bottom = (ROWS - np.argmax(body[::-1], 0))[None, :]
    return (rows < top) & (rows >= top - 16), (rows >= bottom) & (rows < bottom + 16)


def test_a_body_labelled_whole_is_trimmed_to_its_sunk_endplate() -> None:
    image, body = _section("T2w", SUNK)
    whole = np.zeros_like(body)
    whole[TOP:BOTTOM] = True  # the label a network draws: the normal body
    out = trim_to_image(whole, image, *_discs(whole), STEP)
    tops = np.array([np.flatnonzero(out[:, j])[0] for j in range(COLS)])
    # Within 0.75 mm of the endplate where it sank 2 mm or more, 1.25 mm where it sank less
    # (the shortest trim is 1 mm); where it did not sink, untouched.
    sink = np.array([_sink(j, SUNK) for j in range(COLS)])
    short = TOP + sink - tops
    assert np.all(np.abs(short) <= 5), short
    assert np.all(np.abs(short[sink >= 8]) <= 3), short
    assert np.all(tops[sink == 0] == TOP)
    # The bottom endplate did not sink: nothing trimmed there; nothing ever added.
    assert np.all(out[BOTTOM - 1, :])
    assert not (out & ~whole).any()


@pytest.mark.parametrize("contrast", sorted(CONTRASTS))
def test_a_label_that_ends_at_the_endplates_is_left_alone(contrast: str) -> None:
    image, body = _section(contrast, SUNK)
    assert np.array_equal(trim_to_image(body, image, *_discs(body), STEP), body)
    image, body = _section(contrast, 0)
    assert np.array_equal(trim_to_image(body, image, *_discs(body), STEP), body)


def test_a_disc_darker_than_the_marrow_trims_nothing() -> None:
    """T1w, or a degenerated disc on T2w: a dark disc looks like the dark cortex and
    subchondral bone beside a real endplate, so no end is trimmed, even where it sank."""
    image, body = _section("T1w", SUNK)
    whole = np.zeros_like(body)
    whole[TOP:BOTTOM] = True
    assert np.array_equal(trim_to_image(whole, image, *_discs(whole), STEP), whole)


@pytest.mark.parametrize("noise", [0.02, 0.0])
def test_nothing_is_trimmed_where_disc_and_marrow_look_alike(noise: float) -> None:
    image, body = _section("alike", SUNK, noise)  # noiseless too: no division by its noise
    whole = np.zeros_like(body)
    whole[TOP:BOTTOM] = True
    assert np.array_equal(trim_to_image(whole, image, *_discs(whole), STEP), whole)


def test_without_a_disc_label_an_end_stays_as_labelled() -> None:
    image, body = _section("T2w", SUNK)
    whole = np.zeros_like(body)
    whole[TOP:BOTTOM] = True
    _, below = _discs(whole)
    out = trim_to_image(whole, image, np.zeros_like(whole), below, STEP)
    assert np.array_equal(out, whole)


REAL = Path("/work/shared/data/TPTBox")


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real-data folder not available")
def test_a_real_scan_with_reference_labels_keeps_its_heights(monkeypatch) -> None:
    """A real T2w (1.5 mm, degenerated dark discs) with its reference masks in TotalSpineSeg
    ids: the image must not move the endplates of these normal bodies. Reading dark discs
    once trimmed C6 by 11 mm anteriorly and 8 mm posteriorly."""
    monkeypatch.setattr(heights, "MAX_VOXEL_MM", 2.0)  # its 1.5 mm voxels are n/a otherwise
    img = nib.load(REAL / "TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz")
    lab = nib.load(REAL / "derived/sub-mri_label-6_tss-style_dseg.nii.gz")
    on_labels = {r["level"]: r for r in analyse(lab).measures.rows}
    on_image = {r["level"]: r for r in analyse(lab, img).measures.rows}
    keys = ("anterior_height_mm", "middle_height_mm", "posterior_height_mm")
    assert not on_labels["C6"]["na_reason"]
    for key in keys:
        assert on_image["C6"][key] == pytest.approx(on_labels["C6"][key], abs=0.5), key
