"""What a source file is (content, fingerprint, change) and selections whose images would
share outputs, at the level of the BIDS layer (the CLI tests cover the same from the run)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from bidsapp_testkit import make_bids

from bids_app.bids import discovery as disc
from bids_app.bids.sources import content_problem, source_change, source_record


def test_content_problems_name_what_is_missing(tmp_path):
    image = tmp_path / "x_T2w.nii.gz"
    image.write_bytes(b"\x1f\x8b" + b"\0" * 2000)
    assert content_problem(image) is None
    link = tmp_path / "y_T2w.nii.gz"
    link.symlink_to("../.git/annex/objects/Ab/Cd/KEY/KEY")
    assert content_problem(link) == (
        "broken symbolic link to ../.git/annex/objects/Ab/Cd/KEY/KEY (a git-annex/DataLad "
        "file whose content is not here: `datalad get` it)"
    )
    plain = tmp_path / "z_T2w.nii.gz"
    plain.symlink_to("elsewhere.nii.gz")
    assert content_problem(plain) == "broken symbolic link to elsewhere.nii.gz"
    pointer = tmp_path / "p_T2w.nii.gz"
    pointer.write_text("/annex/objects/SHA256E-s10--ab.nii.gz\n")
    assert content_problem(pointer).startswith("git-annex pointer file, not an image")


def test_source_change_compares_time_and_size_then_bytes(tmp_path):
    path = tmp_path / "x_T2w.nii"
    path.write_bytes(b"a" * 100)
    record = source_record(path)
    assert source_change(record, path) is None
    assert source_change(None, path) is None  # a stamp from before sources were recorded
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert source_change(record, path) is None  # touched: the same bytes
    path.write_bytes(b"b" * 100)
    assert source_change(record, path).endswith("(same size, other content)")
    path.write_bytes(b"b" * 101)
    assert source_change(record, path).endswith("(100 -> 101 bytes)")
    path.unlink()
    path.symlink_to("gone.nii")
    assert source_change(record, path) is None  # content dropped: nothing says it changed
    missing = source_record(path)
    assert missing == {"problem": "broken symbolic link to gone.nii"}
    (tmp_path / "gone.nii").write_bytes(b"c" * 10)
    assert source_change(missing, path) == (
        "the source can be read now (before: broken symbolic link to gone.nii)"
    )


def test_a_frozen_selection_with_a_clash_is_refused(tmp_path):
    ds = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T2w.nii.gz"])
    selection = disc.discover(ds, queries=disc.default_queries())
    path = tmp_path / "selection.json"
    disc.save_selection(selection, ds, path)
    data = json.loads(path.read_text())
    twin = dict(data["images"][0], relpath="sub-01/anat/sub-01_T2w.nii")
    data["images"].append(twin)
    path.write_text(json.dumps(data))
    both = "sub-01/anat/sub-01_T2w.nii.gz and sub-01/anat/sub-01_T2w.nii: two selected images"
    with pytest.raises(disc.OutputClashError, match=re.escape(both)):
        disc.load_selection(path, ds)


def test_a_frozen_selection_keeps_a_link_without_content(tmp_path):
    ds = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T2w.nii.gz"])
    selection = disc.discover(ds, queries=disc.default_queries())
    source = Path(selection.jobs[0].path)
    source.unlink()
    source.symlink_to("../../.git/annex/objects/KEY")  # `datalad drop`: the image fails alone
    task = disc.restrict_selection(selection, tmp_path / "selection.json", ["01"], None)
    assert [job.name for job in task.jobs] == ["sub-01_T2w.nii.gz"]
