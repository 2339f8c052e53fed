"""The group level reads the participant level's status records, failed images included."""

from __future__ import annotations

import csv

import pytest
from bidsapp_testkit import DEFAULT_IMAGES, FakeEngineFactory

from bids_app.cli.main import main

ALL = {rel.rsplit("/", 1)[1] for rel in DEFAULT_IMAGES}


@pytest.fixture
def participant_run(dataset, weights, tmp_path, capsys):
    """Run the participant level into tmp_path/out with the given failing images."""
    out = tmp_path / "out"

    def _run(*extra, fail=()):
        argv = [dataset, out, "participant", "--skip-bids-validation", "--weights", weights]
        rc = main([str(a) for a in [*argv, *extra]], engine_factory=FakeEngineFactory(fail))
        capsys.readouterr()
        return rc

    _run.out = out
    return _run


def group(capsys, dataset, out, *extra) -> tuple[int, str]:
    rc = main([str(dataset), str(out), "group", *map(str, extra)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def qc_rows(out) -> list[dict[str, str]]:
    with open(out / "group_qc.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_a_dataset_where_every_image_failed_gets_a_group_table(participant_run, dataset, capsys):
    assert participant_run(fail=ALL) == 1
    rc, _ = group(capsys, dataset, participant_run.out)
    assert rc == 0
    rows = qc_rows(participant_run.out)
    assert len(rows) == len(ALL) and {r["status"] for r in rows} == {"failed"}
    assert all("no spine structure" in r["reason"] for r in rows)


def test_a_participant_whose_only_images_failed_can_be_selected(participant_run, dataset, capsys):
    participant_run(fail={"sub-02_run-1_T2w.nii.gz", "sub-02_T1w.nii.gz"})
    rc, _ = group(capsys, dataset, participant_run.out, "--participant-label", "02")
    assert rc == 0
    rows = qc_rows(participant_run.out)
    assert {r["participant_id"] for r in rows} == {"sub-02"}
    assert [r["status"] for r in rows] == ["failed", "failed"]


def test_labels_without_records(participant_run, dataset, capsys, tmp_path):
    participant_run("--participant-label", "02")
    rc, err = group(capsys, dataset, participant_run.out, "--participant-label", "01")
    assert rc == 18
    assert "no participant-level records for participant(s) 01 (found: 02)" in err
    # Labels read from a file (participants.tsv) without records are skipped, not "missing".
    listed = tmp_path / "participants.tsv"
    listed.write_text("participant_id\nsub-01\nsub-02\n")
    rc, _ = group(capsys, dataset, participant_run.out, "--participant-label", listed)
    assert rc == 0
    assert {r["participant_id"] for r in qc_rows(participant_run.out)} == {"sub-02"}
