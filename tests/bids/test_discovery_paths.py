"""Entities come from the dataset-relative path, whatever the folders above the dataset are
called (pybids 0.22 parses the absolute path, pybids #1270)."""

from __future__ import annotations

import json

import pytest
from bidsapp_testkit import make_bids

from bids_app.bids import discovery as disc

# Every BIDS datatype folder name, and entity-like names, as parents of the dataset.
DATATYPES = [
    "anat", "beh", "dwi", "eeg", "fmap", "func", "ieeg",
    "meg", "micr", "motion", "mrs", "nirs", "perf", "pet",
]  # fmt: skip
ENTITY_LIKE = ["sub-archive", "ses-old", "task-rest", "run-3", "acq-old", "sub-x/ses-y/anat"]

# (subject, session, suffix, relpath) of the default tiny dataset, in job order.
EXPECTED = [
    ("01", "01", "T1w", "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"),
    ("01", "01", "T2w", "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz"),
    ("01", "02", "T2w", "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz"),
    ("02", None, "T1w", "sub-02/anat/sub-02_T1w.nii.gz"),
    ("02", None, "T2w", "sub-02/anat/sub-02_run-1_T2w.nii.gz"),
]
# The other entities each name carries (pybids adds datatype and extension).
OTHER_ENTITIES = [{}, {"acquisition": "sag"}, {"acquisition": "sag"}, {}, {"run": 1}]
FROM_PYBIDS = {"subject", "session", "suffix", "datatype", "extension"}


def jobs_of(selection: disc.Selection) -> list[tuple]:
    return [(j.subject, j.session, j.suffix, j.relpath) for j in selection.jobs]


def assert_exactly_the_dataset(selection: disc.Selection) -> None:
    assert jobs_of(selection) == EXPECTED
    for job, other in zip(selection.jobs, OTHER_ENTITIES, strict=True):
        assert {k: v for k, v in job.entities.items() if k not in FROM_PYBIDS} == other
        assert job.entities["datatype"] == "anat"
    assert selection.subjects == ["01", "02"]


@pytest.mark.parametrize("parent", DATATYPES + ENTITY_LIKE)
def test_parent_folder_names_never_become_entities(tmp_path, parent):
    root = make_bids(tmp_path / parent / "study")
    sel = disc.discover(root, queries=disc.default_queries())
    assert_exactly_the_dataset(sel)
    assert all(j.path == root / j.relpath for j in sel.jobs)
    # Labels and session filters see the dataset's own subjects and sessions only.
    sel = disc.discover(root, queries=disc.default_queries(), participants=["01"], sessions=["02"])
    assert jobs_of(sel) == [EXPECTED[2]]


@pytest.mark.parametrize(
    ("real", "link"),
    [("sub-real/ses-9/func/ds", "clean/ds"), ("clean/ds", "perf/sub-link/ds")],
)
def test_dataset_reached_through_a_symlink(tmp_path, real, link):
    root = make_bids(tmp_path / real)
    alias = tmp_path / link
    alias.parent.mkdir(parents=True)
    alias.symlink_to(root, target_is_directory=True)
    sel = disc.discover(alias, queries=disc.default_queries())
    assert_exactly_the_dataset(sel)
    assert all(j.path == root.resolve() / j.relpath for j in sel.jobs)


def test_annexed_images_keep_their_bids_names(tmp_path):
    """DataLad/git-annex datasets: every image is a symlink into .git/annex/objects."""
    root = make_bids(tmp_path / "dwi" / "ds")
    store = root / ".git" / "annex" / "objects" / "Xx" / "Yy"
    store.mkdir(parents=True)
    for i, (*_, rel) in enumerate(EXPECTED):
        image = root / rel
        target = store / f"MD5E-s{i}--0123{i}.nii.gz"
        image.rename(target)
        image.symlink_to(target)
    assert_exactly_the_dataset(disc.discover(root, queries=disc.default_queries()))


def test_metadata_queries_work_below_an_entity_like_parent(tmp_path):
    root = make_bids(tmp_path / "func" / "sub-x" / "ds")
    sidecar = root / "sub-02/anat/sub-02_run-1_T2w.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.5}))
    queries = disc.merge_queries(disc.default_queries(["T2w"]), {"t2w": {"RepetitionTime": 2.5}})
    assert jobs_of(disc.discover(root, queries=queries)) == [EXPECTED[4]]
