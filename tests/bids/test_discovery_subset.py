"""A per-subject call (`--participant-label 0007`, as CBRAIN and cluster scripts launch BIDS
Apps) indexes only the selected subjects' folders, and selects exactly what a full index would."""

from __future__ import annotations

import pytest
from bidsapp_testkit import make_bids

from bids_app.bids import discovery as disc

FILES = [
    f"sub-{s}/{ses}anat/sub-{s}_{ses.strip('/') + '_' if ses else ''}{c}.nii.gz"
    for s, ses in (("1", ""), ("10", ""), ("11", "ses-a/"), ("2", "ses-b/"))
    for c in ("T1w", "T2w")
]


@pytest.fixture()
def dataset(tmp_path):
    return make_bids(tmp_path / "ds", FILES)


def indexed_subjects(monkeypatch) -> list[list[str]]:
    """Subjects of every pybids index discovery builds."""
    seen: list[list[str]] = []
    build = disc._layout

    def spy(*args, **kwargs):
        layout = build(*args, **kwargs)
        seen.append(sorted(layout.get_subjects()))
        return layout

    monkeypatch.setattr(disc, "_layout", spy)
    return seen


def relpaths(selection: disc.Selection) -> list[str]:
    return [j.relpath for j in selection.jobs]


@pytest.mark.parametrize(
    ("asked", "listed"), [(["1"], None), (["11", "2"], None), (None, ["10"]), (["1"], ["2"])]
)
def test_only_selected_subjects_are_indexed_and_the_selection_is_unchanged(
    dataset, monkeypatch, asked, listed
):
    full = disc.discover(dataset, queries=disc.default_queries())
    want = sorted({*(asked or []), *(listed or [])})
    seen = indexed_subjects(monkeypatch)
    sel = disc.discover(
        dataset, queries=disc.default_queries(), participants=asked, listed_participants=listed
    )
    assert seen == [want]  # label 1 does not pull in sub-10 or sub-11
    assert relpaths(sel) == [j.relpath for j in full.jobs if j.subject in want]
    # The paths are the dataset's own, not those of the view it was indexed through.
    assert [j.path for j in sel.jobs] == [j.path for j in full.jobs if j.subject in want]
    assert all(j.path.is_file() for j in sel.jobs)


def test_localizers_of_a_selected_subject_point_into_the_dataset(dataset):
    loc = disc.localizer_base_query("T1w")
    queries = disc.default_queries(["T2w"])
    full = disc.discover(dataset, queries=queries, localizer_query=loc)
    sel = disc.discover(dataset, queries=queries, localizer_query=loc, participants=["11"])
    want = [j for j in full.jobs if j.subject == "11"]
    assert [(j.path, j.localizer, j.is_localizer) for j in sel.jobs] == [
        (j.path, j.localizer, j.is_localizer) for j in want
    ]
    assert any(j.localizer is not None and j.localizer.is_file() for j in sel.jobs)


def test_sessions_of_a_selected_subject_are_checked_against_its_own_folder(dataset):
    sel = disc.discover(
        dataset, queries=disc.default_queries(), participants=["11"], sessions=["a"]
    )
    assert {j.session for j in sel.jobs} == {"a"}
    with pytest.raises(disc.UnknownLabelError, match="session label"):
        disc.discover(dataset, queries=disc.default_queries(), participants=["11"], sessions=["b"])


def test_unknown_label_still_lists_the_subjects_of_the_dataset(dataset, monkeypatch):
    seen = indexed_subjects(monkeypatch)
    with pytest.raises(disc.MissingImagesError) as err:
        disc.discover(dataset, queries=disc.default_queries(), participants=["99"])
    assert "sub-99" in str(err.value) and "sub-10" in str(err.value)
    assert seen == []  # nothing to index


def test_listed_subjects_without_a_folder_are_skipped_with_a_note(dataset):
    sel = disc.discover(dataset, queries=disc.default_queries(), listed_participants=["1", "77"])
    assert {j.subject for j in sel.jobs} == {"1"}
    assert any("77" in note for note in sel.notes)
