"""The fast sliding window fits the patch to images smaller than it; the reference never does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from bids_app.nnunet.model import NnUNetModel, fitted_patch, network_strides


@pytest.fixture(scope="module")
def step1(tiny_models):
    return NnUNetModel.load(tiny_models["step1"], torch.device("cpu"), threads=1)


def network_inputs(model: NnUNetModel, call) -> tuple[list[tuple[int, ...]], object]:
    """The input shapes the network saw during `call()` (one per sliding-window patch)."""
    seen: list[tuple[int, ...]] = []
    network = model._predictor.network
    hook = network.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        result = call()
    finally:
        hook.remove()
    return seen, result


def test_official_cervical_image_gets_a_patch_a_quarter_smaller():
    # Official ResEnc-L: patch 256x192x80 (nnU-Net order), poolings 2^5, 2^5, 2^4; a cervical
    # image at 1 mm is 170x165x68 and its step-2 crop 170x106x68.
    assert fitted_patch((170, 165, 68), (256, 192, 80), (32, 32, 16)) == [192, 192, 80]
    assert fitted_patch((170, 106, 68), (256, 192, 80), (32, 32, 16)) == [192, 128, 80]
    # Larger or equal along an axis: the planned size there; exact multiples are kept.
    assert fitted_patch((751, 192, 74), (256, 192, 80), (32, 32, 16)) == [256, 192, 80]
    assert fitted_patch((64, 300, 1), (256, 192, 80), (32, 32, 16)) == [64, 192, 16]


def test_strides_come_from_the_plans_and_their_absence_means_no_fit(step1):
    assert network_strides(step1._predictor.configuration_manager) == [4, 4, 4]
    bare = ConfigurationManager({"architecture": {"arch_kwargs": {}}, "patch_size": [32] * 3})
    assert network_strides(bare) is None


def test_reference_window_pads_to_the_plans_patch_whatever_the_precision(step1, image_maker):
    image = image_maker(1, shape=(20, 18, 30), seed=2)  # smaller than 32^3 on every axis
    for precision in ("auto", "bf16"):
        seen, _ = network_inputs(step1, lambda p=precision: step1.predict(image, precision=p))
        assert seen == [(1, 1, 32, 32, 32)]


def test_fast_window_fits_the_patch_and_stays_close(step1, image_maker):
    image = image_maker(1, shape=(20, 18, 30), seed=2)
    reference, ref_probs = step1.predict(image, return_probabilities=True)
    # Any other tile step fits by default; nnU-Net order is (z, y, x) of the (x, y, z) input,
    # cropped to the nonzero box (30-6, 18-5, 20-7) then rounded up to multiples of 4.
    seen, (fast, fast_probs) = network_inputs(
        step1, lambda: step1.predict(image, return_probabilities=True, tile_step=0.75)
    )
    assert seen == [(1, 1, 24, 16, 16)]
    assert fast.shape == reference.shape and fast_probs.shape == ref_probs.shape
    assert not np.array_equal(fast_probs, ref_probs)  # the normalisation saw less padding
    # Asked for explicitly at the reference step, the same fitted patch and the same result.
    seen, (explicit, _) = network_inputs(
        step1,
        lambda: step1.predict(image, return_probabilities=True, tile_step=0.5, fit_patch=True),
    )
    assert seen == [(1, 1, 24, 16, 16)]
    np.testing.assert_array_equal(explicit, fast)  # one patch: the step does not matter
    # And nothing leaks into the next reference call.
    again, again_probs = step1.predict(image, return_probabilities=True)
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(again_probs, ref_probs)
    assert step1._predictor.configuration_manager.patch_size == [32, 32, 32]


def test_fit_changes_nothing_on_an_image_at_least_as_large_as_the_patch(step1, image_maker):
    image = image_maker(1, shape=(60, 50, 46), seed=4)  # nonzero box 53x45x40 > 32^3
    planned, planned_probs = step1.predict(
        image, return_probabilities=True, tile_step=0.75, fit_patch=False
    )
    seen, (fitted, fitted_probs) = network_inputs(
        step1, lambda: step1.predict(image, return_probabilities=True, tile_step=0.75)
    )
    assert set(seen) == {(1, 1, 32, 32, 32)}
    np.testing.assert_array_equal(fitted, planned)
    np.testing.assert_array_equal(fitted_probs, planned_probs)
