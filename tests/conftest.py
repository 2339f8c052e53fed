"""Fixtures shared by the CLI and SLURM tests: a tiny BIDS dataset and fake weights.

The helpers live beside the BIDS-layer tests (tests/bids/bidsapp_testkit.py); this puts them
on the import path for every test package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bids"))

from bidsapp_testkit import make_bids, make_weights


@pytest.fixture
def dataset(tmp_path):
    return make_bids(tmp_path / "ds")


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))
