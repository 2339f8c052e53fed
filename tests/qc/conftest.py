"""Phantoms shared by the QC tests, rendered once per session (a few seconds each)."""

from __future__ import annotations

import pytest

from bids_app.phantom.render import Acquisition, Phantom, render_phantom

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
def lumbar() -> Phantom:
    return render_phantom(SEED, Acquisition(fov="lumbar", voxel="iso1"))
