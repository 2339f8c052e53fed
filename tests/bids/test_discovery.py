"""Image discovery on a small BIDS tree: labels, sessions, filter queries, localizers."""

from __future__ import annotations

import json

import pytest
from bidsapp_testkit import make_bids

from bids_app.bids import discovery as disc


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = make_bids(tmp_path_factory.mktemp("disc") / "ds")
    # Outputs of an earlier run inside the dataset must never be picked up as inputs.
    deriv = root / "derivatives" / "spineseg" / "sub-01" / "anat"
    deriv.mkdir(parents=True)
    (deriv / "sub-01_T2w.nii.gz").write_bytes((root / "sub-02/anat/sub-02_T1w.nii.gz").read_bytes())
    return root


def names(selection: disc.Selection) -> list[str]:
    return [j.name for j in selection.jobs]


def test_finds_every_t2w_and_t1w_with_subject_session_and_entities(ds):
    sel = disc.discover(ds, queries=disc.default_queries())
    assert sorted(names(sel)) == sorted(
        [
            "sub-01_ses-01_acq-sag_T2w.nii.gz",
            "sub-01_ses-01_T1w.nii.gz",
            "sub-01_ses-02_acq-sag_T2w.nii.gz",
            "sub-02_run-1_T2w.nii.gz",
            "sub-02_T1w.nii.gz",
        ]
    )
    job = next(j for j in sel.jobs if j.name == "sub-01_ses-01_acq-sag_T2w.nii.gz")
    assert (job.subject, job.session, job.suffix) == ("01", "01", "T2w")
    assert job.relpath == "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz"
    assert job.path == ds.resolve() / job.relpath
    assert job.entities["acquisition"] == "sag"
    no_session = next(j for j in sel.jobs if j.name == "sub-02_run-1_T2w.nii.gz")
    assert no_session.session is None and no_session.entities["run"] == 1
    assert sel.subjects == ["01", "02"]
    assert sel.sessions == [("01", "01"), ("01", "02"), ("02", None)]
    assert all("derivatives" not in j.relpath for j in sel.jobs)


def test_participant_and_session_filters(ds):
    sel = disc.discover(ds, queries=disc.default_queries(), participants=["01"], sessions=["02"])
    assert names(sel) == ["sub-01_ses-02_acq-sag_T2w.nii.gz"]
    assert "session" in sel.queries["t2w"]


def test_unknown_labels_are_errors_naming_what_exists(ds):
    # A participant asked for by label has no usable image when it does not exist (exit 66).
    with pytest.raises(
        disc.MissingImagesError, match=r"sub-99 \(not in the dataset, which has sub-01, sub-02\)"
    ):
        disc.discover(ds, queries=disc.default_queries(), participants=["01", "99"])
    with pytest.raises(disc.UnknownLabelError, match="session label"):
        disc.discover(ds, queries=disc.default_queries(), sessions=["07"])


def test_suffix_selection_and_empty_selection(ds):
    sel = disc.discover(ds, queries=disc.default_queries(["T1w"]))
    assert sorted(names(sel)) == ["sub-01_ses-01_T1w.nii.gz", "sub-02_T1w.nii.gz"]
    with pytest.raises(disc.EmptySelectionError, match="FLAIR"):
        disc.discover(ds, queries=disc.default_queries(["FLAIR"]))
    with pytest.raises(disc.FilterError):
        disc.default_queries(["T2w_x"])


def test_subject_asked_by_label_without_images_is_its_own_error(ds):
    queries = disc.merge_queries(disc.default_queries(), {"t1w": {"session": "01"}})
    queries["t2w"]["session"] = "01"
    # sub-02 has no session: asking for it explicitly is an error, implicitly it is skipped.
    with pytest.raises(disc.MissingImagesError, match="sub-02"):
        disc.discover(ds, queries=queries, participants=["01", "02"])
    sel = disc.discover(ds, queries=queries)
    assert sel.skipped_subjects == ["02"]
    assert "No matching image (skipped): sub-02" in sel.describe()


def test_filter_file_null_star_lists_and_aliases(ds, tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"T2w": {"acq": None}, "t1w": {"session": "*"}}))
    filters = disc.load_filter_file(path)
    assert filters == {"t2w": {"acquisition": None}, "t1w": {"session": "*"}}
    queries = disc.merge_queries(disc.default_queries(), filters)
    # Defaults not named by the filter are kept (fMRIPrep #2637).
    assert queries["t2w"] == {"datatype": "anat", "suffix": "T2w", "acquisition": None}
    sel = disc.discover(ds, queries=queries)
    assert sorted(names(sel)) == ["sub-01_ses-01_T1w.nii.gz", "sub-02_run-1_T2w.nii.gz"]
    assert '"acquisition": null' in "\n".join(sel.describe())
    queries = disc.merge_queries(disc.default_queries(), {"t2w": {"acquisition": "*"}})
    assert "sub-02_run-1_T2w.nii.gz" not in names(disc.discover(ds, queries=queries))
    queries = disc.merge_queries(disc.default_queries(["T2w"]), {"t2w": {"session": ["01", "02"]}})
    assert len(disc.discover(ds, queries=queries).jobs) == 2


def test_filter_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(disc.FilterError, match=r"bad\.json: not valid JSON"):
        disc.load_filter_file(bad)
    bad.write_text('{"t2w": 3}')
    with pytest.raises(disc.FilterError, match="image kind -> query"):
        disc.load_filter_file(bad)
    bad.write_text('{"t2w": {"run": {"a": 1}}}')
    with pytest.raises(disc.FilterError, match="'run'"):
        disc.load_filter_file(bad)
    with pytest.raises(disc.FilterError, match="'bold' is not selected"):
        disc.merge_queries(disc.default_queries(), {"bold": {}})
    with pytest.raises(disc.FilterError, match="cannot read"):
        disc.load_filter_file(tmp_path / "missing.json")


def test_localizer_is_first_and_guides_its_session_only(ds):
    sel = disc.discover(
        ds, queries=disc.default_queries(["T2w"]), localizer_query=disc.localizer_base_query("T1w")
    )
    order = names(sel)
    assert order.index("sub-01_ses-01_T1w.nii.gz") < order.index("sub-01_ses-01_acq-sag_T2w.nii.gz")
    by_name = {j.name: j for j in sel.jobs}
    assert by_name["sub-01_ses-01_T1w.nii.gz"].is_localizer
    assert by_name["sub-01_ses-01_T1w.nii.gz"].localizer is None
    assert by_name["sub-01_ses-01_acq-sag_T2w.nii.gz"].localizer.name == "sub-01_ses-01_T1w.nii.gz"
    assert by_name["sub-02_run-1_T2w.nii.gz"].localizer.name == "sub-02_T1w.nii.gz"
    # Another session of the same subject is never guided by ses-01's localizer.
    assert by_name["sub-01_ses-02_acq-sag_T2w.nii.gz"].localizer is None
    assert any("sub-01 ses-02: no localizer" in n for n in sel.notes)


def test_inline_localizer_query(tmp_path):
    query = disc.read_query_source('{"suffix": "T2w", "acq": "sag"}', "--localizer")
    assert query == {"suffix": "T2w", "acquisition": "sag"}
    path = tmp_path / "loc.json"
    path.write_text('["T2w"]')
    with pytest.raises(disc.FilterError, match="must be a JSON object"):
        disc.read_query_source(str(path), "--localizer")


def test_read_only_dataset_can_be_indexed(tmp_path):
    root = make_bids(tmp_path / "ro", ["sub-01/anat/sub-01_T2w.nii.gz"])
    paths = [root, *root.rglob("*")]
    try:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        sel = disc.discover(root, queries=disc.default_queries())
        assert names(sel) == ["sub-01_T2w.nii.gz"]
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)
