"""The demo's own phantom dataset is complete BIDS: the validator reports nothing about it.

`make demo` validates its input like any user dataset; a screen of warnings about the
project's own data would teach users to ignore the validator. Users' datasets keep their
warnings (tests/cli/test_participant.py checks they are shown by kind).
"""

from __future__ import annotations

import json

import pytest

from bids_app.bids.validation import find_validator, validate
from bids_app.phantom.bids_dataset import write_phantom_dataset


@pytest.mark.slow
@pytest.mark.parametrize("lesions", [False, True], ids=["plain", "lesions"])
def test_phantom_dataset_gives_no_validator_issue(tmp_path, lesions):
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed (test extra)")
    root = tmp_path / "ds"
    write_phantom_dataset(root, 2, lesions=lesions)
    report = validate(root)
    found = [
        f"{i.get('code')} {i.get('subCode') or ''} {i.get('location')}"
        for i in report.errors + report.warnings
    ]
    assert not found, found


def test_phantom_sidecars_say_their_acquisition_fields_are_nominal(tmp_path):
    # The filled acquisition fields are not a simulated protocol; the data must say so.
    root = tmp_path / "ds"
    images = write_phantom_dataset(root, 1)
    assert "nominal" in (root / "README").read_text()
    for image in images:
        sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
        assert "nominal" in sidecar["SeriesDescription"]
