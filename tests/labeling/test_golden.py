"""Exact parity with the reference tool (totalspineseg==20260807) on its own outputs.

tests/labeling/golden/ holds hand-made raw maps run through the reference's
iterative_label, fill_canal and extract_levels (cases.json says how). Every array must match
voxel for voxel, and a case the reference refused must be refused here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bids_app.labeling import LabelingError, extract_levels, fill_canal, label_step1, label_step2

GOLDEN = Path(__file__).parent / "golden"


def _cases() -> list[str | None]:
    """The committed golden cases; [None] when they are missing, which fails the test."""
    index = GOLDEN / "cases.json"
    cases = json.loads(index.read_text())["cases"] if index.is_file() else {}
    return sorted(cases) or [None]


@pytest.mark.parametrize("name", _cases())
def test_matches_reference(name):
    assert name is not None, (
        f"no golden cases in {GOLDEN}: they are committed with the repository "
        "(made by benchmarks/make_labeling_goldens.py); restore them"
    )
    meta = json.loads((GOLDEN / "cases.json").read_text())["cases"][name]
    data = np.load(GOLDEN / f"{name}.npz")
    label = {1: label_step1, 2: label_step2}[meta["step"]]
    loc = data["loc"] if meta["uses_localizer"] else None
    if bool(data["failed"]):
        with pytest.raises(LabelingError):
            label(data["seg"], loc)
        return
    out = label(data["seg"], loc)
    np.testing.assert_array_equal(out.labels, data["expected"])
    filled = fill_canal(out.labels)
    np.testing.assert_array_equal(filled, data["filled_expected"])
    if "levels_expected" in data.files:
        np.testing.assert_array_equal(extract_levels(filled), data["levels_expected"])
