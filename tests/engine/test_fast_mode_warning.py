"""The fast-mode warning (sidecars, status table, report) names every non-reference choice."""

from __future__ import annotations

import pytest

from bids_app.engine.options import SegmentOptions
from bids_app.engine.pipeline import fast_mode_warning


def test_reference_options_are_not_fast():
    assert not SegmentOptions().differs_from_reference
    assert not SegmentOptions(precision="auto", tile_step=0.5).differs_from_reference


@pytest.mark.parametrize(
    ("options", "named", "not_named"),
    [
        (SegmentOptions(tile_step=1.0), ["tile step 1.0", "patch is also fitted"], ["precision"]),
        (SegmentOptions(precision="bf16"), ["network precision bf16"], ["tile step"]),
        (SegmentOptions(precision="fp32"), ["network precision fp32"], ["tile step"]),
        (
            SegmentOptions(tile_step=1.0, precision="bf16"),
            ["tile step 1.0", "network precision bf16"],
            [],
        ),
    ],
)
def test_warning_names_what_differs(options, named, not_named):
    assert options.differs_from_reference
    text = fast_mode_warning(options)
    assert text.startswith("fast mode: ") and "\n" not in text
    assert all(n in text for n in named)
    assert not any(n in text for n in not_named)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        SegmentOptions(precision="fp16")


def test_record_keeps_old_hashes_and_names_a_new_precision():
    assert "precision" not in SegmentOptions().record()
    assert SegmentOptions(precision="bf16").record()["precision"] == "bf16"
