"""Atomic writes, parallel writers of the shared root files, stamps and resume decisions."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidsapp_testkit import make_bids, tiny_image

from bids_app.bids import derivatives as d
from bids_app.bids import stamps as st
from bids_app.plumbing import atomic

MODEL = d.ModelInfo("r1", ("Dataset101_a", "Dataset102_b"), {"a.zip": "00" * 32})


def hidden_leftovers(folder: Path) -> list[str]:
    """Temp files of atomic writes (`.<name>.<random>.tmp...`) still lying around."""
    return [p.name for p in folder.rglob(".*.tmp*")]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert hidden_leftovers(tmp_path) == []


def test_nifti_written_atomically_with_umask_mode(tmp_path):
    img = tiny_image()
    path = tmp_path / "sub" / "x_dseg.nii.gz"
    atomic.save_nifti_atomic(img, path)
    back = nib.load(path)
    assert np.array_equal(back.get_fdata(), img.get_fdata())
    with open(path, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip, as the name says
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert hidden_leftovers(tmp_path) == []


def _write_root(args) -> list[str]:
    out, raw, version = args
    return d.write_dataset_files(Path(out), Path(raw), MODEL, app_version=version, env={})


def test_parallel_participant_runs_share_root_files_safely(tmp_path):
    raw = make_bids(tmp_path / "ds", [])
    out = tmp_path / "out"
    with mp.get_context("fork").Pool(4) as pool:  # separate processes, as cluster jobs are
        changed = pool.map(_write_root, [(str(out), str(raw), "0.1.0")] * 8, chunksize=1)
    # Each root file was written by exactly one job; the others found it identical.
    counts = {}
    for names in changed:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    assert counts and set(counts.values()) == {1}
    expected = d.dataset_description(out, raw, MODEL, app_version="0.1.0", env={})
    assert json.loads((out / "dataset_description.json").read_text()) == expected
    assert (out / "seg-spine_dseg.tsv").read_bytes() == d.spine_lut()
    assert hidden_leftovers(out) == []


def test_parallel_writers_with_different_content_never_leave_a_torn_file(tmp_path):
    raw = make_bids(tmp_path / "ds", [])
    out = tmp_path / "out"
    versions = [f"0.{i % 3}.0" for i in range(8)]
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_write_root, [(str(out), str(raw), v) for v in versions], chunksize=1)
    final = json.loads((out / "dataset_description.json").read_text())
    assert final["GeneratedBy"][0]["Version"] in set(versions)
    assert hidden_leftovers(out) == []


def test_stamp_path_and_options_hash():
    path = st.stamp_path(Path("/out"), "sub-01_ses-01_T2w.nii.gz")
    assert path == Path("/out/logs/status/sub-01_ses-01_T2w.json")
    assert st.stamp_path(Path("/o"), "sub-01_T1w.nii").name == "sub-01_T1w.json"
    a = st.options_hash({"iso": True, "step1_only": False})
    assert a == st.options_hash({"step1_only": False, "iso": True})
    assert a != st.options_hash({"iso": False, "step1_only": False})


def _ok_stamp(tmp_path: Path) -> dict:
    (tmp_path / "sub-01").mkdir(exist_ok=True)
    (tmp_path / "sub-01" / "a_dseg.nii.gz").write_bytes(b"x")
    record = {
        "status": st.Status.OK,
        "reason": None,
        "app_version": "1.0",
        "options_hash": "h",
        "model": MODEL.stamp(),
        "outputs": ["sub-01/a_dseg.nii.gz"],
    }
    path = tmp_path / "logs" / "status" / "a.json"
    written = st.write_stamp(path, record)
    assert "finished" in written
    return st.read_stamp(path)


@pytest.mark.parametrize(
    ("change", "run", "warn", "why"),
    [
        ({}, False, False, "already done"),
        ({"overwrite": True}, True, False, "--overwrite"),
        ({"app_version": "2.0"}, True, True, "spineseg 1.0, now 2.0"),
        ({"opts_hash": "other"}, True, True, "other options"),
        ({"model": {"release": "r2", "sha256": MODEL.sha256}}, True, True, "release r1, now r2"),
        ({"model": {"release": "r1", "sha256": {"a.zip": "11" * 32}}}, True, True, "hashes"),
    ],
)
def test_resume_decision(tmp_path, change, run, warn, why):
    stamp = _ok_stamp(tmp_path)
    kwargs = {
        "output_dir": tmp_path,
        "app_version": "1.0",
        "opts_hash": "h",
        "model": MODEL.stamp(),
        "overwrite": False,
    }
    kwargs.update(change)
    decision = st.resume_decision(stamp, **kwargs)
    assert (decision.run, decision.warn) == (run, warn)
    assert why in decision.reason


def test_resume_recomputes_incomplete_or_failed_results(tmp_path):
    kwargs = {
        "output_dir": tmp_path,
        "app_version": "1.0",
        "opts_hash": "h",
        "model": MODEL.stamp(),
    }
    assert st.resume_decision(None, **kwargs).run  # killed before the stamp: recompute
    stamp = _ok_stamp(tmp_path)
    (tmp_path / "sub-01" / "a_dseg.nii.gz").unlink()
    decision = st.resume_decision(stamp, **kwargs)
    assert decision.run and "missing" in decision.reason
    corrupt = tmp_path / "logs" / "status" / "broken.json"
    corrupt.write_text('{"status": "o')
    assert st.read_stamp(corrupt) is None


def test_a_failure_made_the_same_way_is_skipped_but_still_reported(tmp_path):
    kwargs = {"output_dir": tmp_path, "app_version": "1.0", "opts_hash": "h"}
    failed = {
        **_ok_stamp(tmp_path),
        "status": st.Status.FAILED,
        "reason": "bad header",
        "outputs": [],
    }
    decision = st.resume_decision(failed, model=MODEL.stamp(), **kwargs)
    assert (decision.run, decision.status) == (False, st.Status.FAILED)
    assert decision.reason == (
        "failed before with the same version, options and model: bad header; "
        "--retry-failed to try again"
    )
    partial = {**failed, "status": st.Status.PARTIAL}
    assert st.resume_decision(partial, model=MODEL.stamp(), **kwargs).status == "partial"
    retried = st.resume_decision(failed, model=MODEL.stamp(), retry_failed=True, **kwargs)
    assert retried.run and "--retry-failed given" in retried.reason
    transient = st.resume_decision({**failed, "transient": True}, model=MODEL.stamp(), **kwargs)
    assert transient.run and "retrying" in transient.reason
    newer = st.resume_decision(failed, model=MODEL.stamp(), **{**kwargs, "app_version": "2.0"})
    assert (newer.run, newer.warn) == (True, False)  # nothing good is replaced: no warning
    unknown = st.resume_decision(_ok_stamp(tmp_path), model=None, **kwargs)
    assert (unknown.run, unknown.reason) == (
        False,
        "already done with the same version and options",
    )
