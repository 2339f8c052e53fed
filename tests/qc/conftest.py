"""Phantoms shared by the QC tests, rendered once per session (a few seconds each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from qc_helpers import add_image, stamp_for

from bids_app.bids.stamps import write_stamp
from bids_app.phantom.render import Acquisition, Phantom, render_phantom
from bids_app.qc import write_subject_report

SEED = 3


@pytest.fixture(scope="session")
def cervical() -> Phantom:
    return render_phantom(SEED, Acquisition(fov="cervical", voxel="iso1"))


@pytest.fixture(scope="session")
def cervical_sag3() -> Phantom:
    return render_phantom(SEED, Acquisition(fov="cervical", voxel="sag3", axcodes="PSR"))


@pytest.fixture(scope="session")
def cervical_ax4() -> Phantom:
    return render_phantom(SEED, Acquisition(fov="cervical", voxel="ax4", lr_extent=80.0))


@pytest.fixture(scope="session")
def cervical_oblique() -> Phantom:
    return render_phantom(
        SEED, Acquisition(fov="cervical", voxel="iso1", axcodes="LAS", oblique_deg=(12, 8, 20))
    )


@pytest.fixture(scope="session")
def whole() -> Phantom:
    """Whole spine, 1 mm, 5 lumbar vertebrae (narrow left-right extent keeps it fast)."""
    return render_phantom(SEED, Acquisition(fov="whole", lr_extent=40.0), n_lumbar=5)


@pytest.fixture(scope="session")
def lumbar() -> Phantom:
    return render_phantom(SEED, Acquisition(fov="lumbar", voxel="iso1"))


@dataclass
class Derivatives:
    """A participant-level output folder made from phantoms, and the raw BIDS folder."""

    out: Path
    bids: Path
    keys: dict[str, str]  # short name -> image key (stamp name)


@pytest.fixture(scope="session")
def derivatives(tmp_path_factory, cervical, lumbar, cervical_sag3) -> Derivatives:
    """sub-01: ses-01 (cervical, ok), ses-02 (lumbar, ok), ses-03 (failed); sub-02 (ok)."""
    base = tmp_path_factory.mktemp("derivatives")
    out, bids = base / "out", base / "bids"
    keys = {
        "cervical": add_image(out, bids, cervical, "01", "01"),
        "lumbar": add_image(out, bids, lumbar, "01", "02"),
        "sag3": add_image(out, bids, cervical_sag3, "02", None),
    }
    failed = "sub-01/ses-03/anat/sub-01_ses-03_acq-sag_T2w.nii.gz"
    write_stamp(
        out / "logs/status/sub-01_ses-03_acq-sag_T2w.json",
        stamp_for("01", "03", failed, "failed", [], reason=f"{failed}: image is 2-D"),
    )
    keys["failed"] = "sub-01_ses-03_acq-sag_T2w"
    for sub in ("01", "02"):
        write_subject_report(out, sub)
    return Derivatives(out, bids, keys)
