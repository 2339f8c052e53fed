"""Shared fixtures for the CLI tests; the helpers live beside the BIDS-layer tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bidsapp_testkit import FakeEngineFactory

# Stands in for `bids_app.qc` in the participant run: writes nothing, reports nothing.
NO_QC = SimpleNamespace(
    write_image_qc=lambda *args, **kwargs: {"outputs": []},
    write_subject_report=lambda *args, **kwargs: None,
    rebuild_reports=lambda *args, **kwargs: [],
)


def pytest_configure(config):
    config.addinivalue_line("markers", "with_qc: run the real QC layer in a CLI test")


@pytest.fixture
def factory():
    return FakeEngineFactory()


@pytest.fixture(autouse=True)
def no_qc(request, monkeypatch):
    """QC (previews, reports) is tested in its own package; here it only costs time.

    Tests marked `with_qc` keep it, to check the hand-over between the two layers.
    """
    if "with_qc" not in request.keywords:
        from bids_app.run import participant
        from bids_app.run.stages import image_qc

        monkeypatch.setattr(participant, "qc", NO_QC)
        monkeypatch.setattr(image_qc, "qc", NO_QC)
