"""Fixtures for the SLURM script tests: a tiny dataset and fake weights (tests/bids helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids"))

from bidsapp_testkit import make_bids, make_weights


@pytest.fixture
def dataset(tmp_path):
    return make_bids(tmp_path / "ds")


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))
