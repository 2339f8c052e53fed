"""The per-image memory estimate: grows as the arrays do, refuses nonsense in one line."""

from __future__ import annotations

import pytest

from bids_app.engine.memory import estimate_peak_bytes, step_peak_bytes

WHOLE = (70, 180, 690)  # whole-spine phantom on the 1 mm grid
PATCH = (80, 192, 256)  # ResEnc-L patch for such data, nibabel order


def test_large_images_cost_in_proportion_to_their_voxels():
    one = estimate_peak_bytes(WHOLE, 9, 14)
    two = estimate_peak_bytes((140, 180, 690), 9, 14)
    assert two == 2 * one


def test_more_heads_cost_more():
    assert estimate_peak_bytes(WHOLE, 9, 14) > estimate_peak_bytes(WHOLE, 9, 4)
    assert estimate_peak_bytes(WHOLE, 9, 14, step1_only=True) > estimate_peak_bytes(
        WHOLE, 3, 14, step1_only=True
    )


def test_whole_spine_needs_about_a_gigabyte_of_arrays():
    """Step 2's 14 heads at 2 + 4 + 4 B each dominate: under 200 B per voxel, 8.7 M voxels."""
    gib = estimate_peak_bytes(WHOLE, 9, 14, patch_size=PATCH) / 2**30
    assert 1.0 < gib < 2.0


def test_an_image_smaller_than_the_patch_costs_the_padded_patch_in_the_sliding_window():
    small = (20, 20, 20)
    unpadded = step_peak_bytes(small, 1, 9, probabilities=False)
    padded = step_peak_bytes(small, 1, 9, probabilities=False, patch_size=(64, 64, 64))
    assert padded > unpadded
    # The padded sliding window alone: input, float16 logits sum and weight count.
    assert padded >= 64**3 * (4 + 2 * 9 + 2)


def test_cropping_step2_lowers_the_estimate_but_never_below_step1():
    full = estimate_peak_bytes(WHOLE, 9, 14)
    cropped = estimate_peak_bytes(WHOLE, 9, 14, step2_shape=(50, 90, 690))
    step1 = estimate_peak_bytes(WHOLE, 9, 14, step1_only=True)
    assert step1 <= cropped < full


def test_probabilities_cost_memory():
    assert step_peak_bytes(WHOLE, 1, 9, probabilities=True) > step_peak_bytes(
        WHOLE, 1, 1, probabilities=True
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape_1mm": (70, 180)}, "shape_1mm must be three positive whole numbers"),
        ({"shape_1mm": (70, 0, 690)}, "shape_1mm must be three positive whole numbers"),
        ({"shape_1mm": (70, 180.5, 690)}, "shape_1mm must be three positive whole numbers"),
        ({"step2_shape": (80, 10, 10)}, "is larger than the 1 mm grid"),
        ({"patch_size": (0, 1, 1)}, "patch_size must be three positive whole numbers"),
        ({"n_step1_heads": 0}, "at least one channel and one head"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    args = {"shape_1mm": WHOLE, "n_step1_heads": 9, "n_step2_heads": 14, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        estimate_peak_bytes(**args)
    assert "\n" not in str(info.value)
