"""The tile step is chosen per predict call: 0.5 (the reference) unless asked otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app.nnunet.model import NnUNetModel


@pytest.fixture(scope="module")
def step1(tiny_models):
    return NnUNetModel.load(tiny_models["step1"], torch.device("cpu"), threads=1)


def test_fast_step_differs_and_does_not_leak_into_the_next_call(step1, image_maker):
    # Larger than the 32^3 patch on every axis: 0.5 needs more, overlapping patches than 1.0.
    image = image_maker(1, shape=(70, 58, 50), seed=3)
    reference, ref_probs = step1.predict(image, return_probabilities=True)
    fast, fast_probs = step1.predict(image, return_probabilities=True, tile_step=1.0)
    assert fast.shape == reference.shape
    assert not np.array_equal(fast_probs, ref_probs)
    again, again_probs = step1.predict(image, return_probabilities=True)
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(again_probs, ref_probs)
    explicit, _ = step1.predict(image, tile_step=0.5)
    np.testing.assert_array_equal(explicit, reference)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_impossible_tile_step_is_a_one_line_error(step1, image_maker, bad):
    with pytest.raises(ValueError, match=r"tile step must be in \(0, 1\]"):
        step1.predict(image_maker(1, shape=(40, 36, 30)), tile_step=bad)
