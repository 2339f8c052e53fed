"""Runs that meet odd data: results that would mix, stale sources, links without content,
outputs deleted by hand, overlapping folders, images that break a stage (issue 28)."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidsapp_testkit import FakeEngineFactory, make_bids, tiny_image

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.cli.main import main
from bids_app.run.progress import RunProgress

TWO = ["sub-01/anat/sub-01_T2w.nii.gz", "sub-02/anat/sub-02_T2w.nii.gz"]
ANNEX_TARGET = "../../.git/annex/objects/Xx/Yy/SHA256E-s1--ab.nii.gz/SHA256E-s1--ab.nii.gz"


@pytest.fixture
def run(weights, tmp_path, capsys):
    """Participant level of `bids_dir` into tmp_path/out: (rc, stdout, stderr, factory)."""
    out = tmp_path / "out"

    def _run(bids_dir, *extra, level="participant", **engine):
        factory = FakeEngineFactory(**engine)
        argv = [bids_dir, out, level]
        if level == "participant":
            argv += ["--skip-bids-validation", "--weights", weights]
        rc = main([str(a) for a in [*argv, *extra]], engine_factory=factory)
        stdout, stderr = capsys.readouterr()
        assert "Traceback" not in stdout + stderr
        return rc, stdout, stderr, factory

    _run.out = out
    return _run


def status_rows(stdout: str) -> dict[str, list[str]]:
    """Image name -> [status, seconds, reason] from the end-of-run table."""
    table = stdout.split("Status:\n")[1].split("\n\n")[0].splitlines()[1:]
    return {line.split()[2]: line.split(None, 5)[3:] for line in table}


def stamp(out: Path, name: str) -> dict:
    data = read_stamp(stamp_path(out, name))
    assert data is not None, name
    return data


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("spineseg: error:")]


# ---------------------------------------------------------------------------------------------
# Folders


def test_output_dir_containing_the_input_is_refused(tmp_path, capsys):
    study = tmp_path / "study"
    raw = make_bids(study / "raw", ["sub-01/anat/sub-01_T2w.nii.gz"])
    before = sorted(p.name for p in study.iterdir())
    for out in (study, tmp_path):  # the parent, and any folder above it
        rc = main([str(raw), str(out), "participant", "--skip-bids-validation"])
        assert rc == 64
        assert "output_dir contains the input dataset" in capsys.readouterr().err
    assert sorted(p.name for p in study.iterdir()) == before  # nothing written beside raw/


def test_output_dir_containing_the_input_names_it(tmp_path, capsys):
    study = tmp_path / "study"
    raw = make_bids(study / "raw", ["sub-01/anat/sub-01_T2w.nii.gz"])
    rc = main([str(raw), str(study), "participant"])
    err = capsys.readouterr().err
    assert rc == 64
    assert error_lines(err) == [
        f"spineseg: error: {study}: output_dir contains the input dataset {raw} (the outputs "
        f"would not be a valid derivatives dataset); use {raw}/derivatives/spineseg or a "
        "folder outside it"
    ]
    assert not (study / "dataset_description.json").exists()


# ---------------------------------------------------------------------------------------------
# Results never mix


def clashing_dataset(root: Path) -> Path:
    """sub-01 holds x_T2w.nii and x_T2w.nii.gz (the validator accepts both); sub-02 is fine."""
    ds = make_bids(root, ["sub-01/anat/sub-01_acq-sag_T2w.nii.gz", "sub-02/anat/sub-02_T2w.nii.gz"])
    nib.save(tiny_image(seed=7), ds / "sub-01/anat/sub-01_acq-sag_T2w.nii")
    return ds


@pytest.mark.parametrize("extra", [(), ("--dry-run",), ("--participant-label", "01")])
def test_two_sources_with_one_output_name_are_refused_before_any_work(run, tmp_path, extra):
    ds = clashing_dataset(tmp_path / "ds")
    rc, _, stderr, factory = run(ds, *extra)
    assert rc == 65
    assert error_lines(stderr) == [
        "spineseg: error: sub-01/anat/sub-01_acq-sag_T2w.nii and "
        "sub-01/anat/sub-01_acq-sag_T2w.nii.gz: two selected images would write the same "
        "outputs and status stamp (sub-01_acq-sag_T2w_*); remove or rename one of each pair, "
        "or leave one out with --bids-filter-file"
    ]
    assert factory.engines == []
    assert not (run.out / "logs" / "status").exists()


def test_a_clash_outside_the_selection_does_not_matter(run, tmp_path):
    ds = clashing_dataset(tmp_path / "ds")
    rc, stdout, _, _ = run(ds, "--participant-label", "02")
    assert rc == 0 and list(status_rows(stdout)) == ["sub-02_T2w.nii.gz"]


def test_a_filter_that_leaves_one_of_the_pair_out_runs(run, tmp_path):
    ds = clashing_dataset(tmp_path / "ds")
    filters = tmp_path / "filter.json"
    filters.write_text('{"t2w": {"extension": ".nii.gz"}}')
    rc, stdout, _, _ = run(ds, "--bids-filter-file", filters)
    assert rc == 0
    assert sorted(status_rows(stdout)) == ["sub-01_acq-sag_T2w.nii.gz", "sub-02_T2w.nii.gz"]


def test_names_differing_only_in_case_clash(run, tmp_path):
    ds = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_acq-sag_T2w.nii.gz"])
    nib.save(tiny_image(seed=3), ds / "sub-01/anat/sub-01_acq-SAG_T2w.nii.gz")
    rc, _, stderr, _ = run(ds)
    assert rc == 65 and "sub-01_acq-SAG_T2w.nii.gz" in stderr


# ---------------------------------------------------------------------------------------------
# Stale results


def test_a_replaced_source_is_recomputed_and_the_reason_says_so(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    assert run(ds)[0] == 0
    first = stamp(run.out, "sub-01_T2w.nii.gz")
    assert set(first["source_file"]) == {"size", "mtime_ns", "sha256"}
    nib.save(tiny_image(shape=(9, 11, 13), seed=42), ds / "sub-01/anat/sub-01_T2w.nii.gz")
    rc, stdout, stderr, factory = run(ds)
    assert rc == 0
    assert [c[0] for c in factory.calls] == ["sub-01_T2w.nii.gz"]
    assert "sub-01_T2w.nii.gz: the source image changed since the previous result" in stderr
    assert status_rows(stdout)["sub-02_T2w.nii.gz"][0] == "skipped"
    again = stamp(run.out, "sub-01_T2w.nii.gz")
    assert again["source_file"]["sha256"] != first["source_file"]["sha256"]
    labels = nib.load(run.out / "sub-01/anat/sub-01_seg-spine_desc-T2w_dseg.nii.gz")
    assert labels.shape == (9, 11, 13)  # outputs on the new grid


def test_same_size_new_content_is_noticed_and_a_touch_is_not(run, tmp_path):
    ds = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T2w.nii"])
    src = ds / "sub-01/anat/sub-01_T2w.nii"
    run(ds)
    info = src.stat()
    os.utime(src, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # touched: same bytes
    rc, _, _, factory = run(ds)
    assert rc == 0 and factory.engines == []
    nib.save(tiny_image(seed=9), src)  # same header and size, other voxels
    assert src.stat().st_size == info.st_size
    os.utime(src, ns=(info.st_atime_ns, info.st_mtime_ns))  # even with the old time kept...
    factory = run(ds)[3]
    assert factory.engines == []  # ...size and time match: the cheap check trusts them
    os.utime(src, ns=(info.st_atime_ns, info.st_mtime_ns + 2 * 10**9))
    rc, _, stderr, factory = run(ds)
    assert [c[0] for c in factory.calls] == ["sub-01_T2w.nii"]
    assert "same size, other content" in stderr


def test_a_link_without_content_fails_alone_and_is_retried_once_the_content_is_there(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    src = ds / "sub-02/anat/sub-02_T2w.nii.gz"
    content = src.read_bytes()
    src.unlink()
    src.symlink_to(ANNEX_TARGET)
    rc, stdout, _, factory = run(ds)
    assert rc == 1
    row = status_rows(stdout)["sub-02_T2w.nii.gz"]
    assert row[0] == "failed"
    assert row[2].startswith(f"broken symbolic link to {ANNEX_TARGET}")
    assert "datalad get" in row[2]
    assert status_rows(stdout)["sub-01_T2w.nii.gz"][0] == "ok"

    rc, stdout, _, factory = run(ds)  # still no content: the same failure, nothing run
    assert rc == 1 and factory.engines == []

    target = (src.parent / ANNEX_TARGET).resolve()
    target.parent.mkdir(parents=True)
    target.write_bytes(content)  # `datalad get`
    rc, stdout, stderr, factory = run(ds)
    assert rc == 0
    assert [c[0] for c in factory.calls] == ["sub-02_T2w.nii.gz"]
    assert "the source can be read now (before: broken symbolic link to" in stderr
    assert stamp(run.out, "sub-02_T2w.nii.gz")["status"] == "ok"

    target.unlink()  # `datalad drop` after the run: the result stays
    rc, stdout, _, factory = run(ds)
    assert rc == 0 and factory.engines == []


def test_a_git_annex_pointer_file_is_named_as_such(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    (ds / "sub-02/anat/sub-02_T2w.nii.gz").write_text("/annex/objects/SHA256E-s1--ab.nii.gz\n")
    rc, stdout, _, _ = run(ds)
    assert rc == 1
    assert status_rows(stdout)["sub-02_T2w.nii.gz"][2].startswith("git-annex pointer file")


# ---------------------------------------------------------------------------------------------
# The group level notices deleted outputs


def test_group_reports_outputs_deleted_after_the_participant_run(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    assert run(ds)[0] == 0
    assert run(ds, level="group")[0] == 0
    shutil.rmtree(run.out / "sub-02")
    rc, _, stderr, _ = run(ds, level="group")
    assert rc == 66
    assert "sub-02_T2w: " in stderr and "outputs its status stamp lists are gone" in stderr
    assert error_lines(stderr)[-1].endswith(
        "outputs of 1 image(s) are gone (listed above, and as missing in group_qc.tsv and "
        "group_worklist.tsv); run the participant level again"
    )
    with open(run.out / "group_qc.tsv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert rows["sub-02_T2w"]["status"] == "missing"
    assert rows["sub-02_T2w"]["qc_status"] == "fail"
    assert "run the participant level again" in rows["sub-02_T2w"]["reason"]
    assert rows["sub-01_T2w"]["status"] == "ok"
    with open(run.out / "group_worklist.tsv") as f:
        work = [r["image"] for r in csv.DictReader(f, delimiter="\t")]
    assert work == ["sub-02_T2w"]
    assert run(ds, "--participant-label", "01", level="group")[0] == 0  # the other alone is fine

    rc, _, stderr, factory = run(ds)  # the participant level recomputes it
    assert rc == 0 and [c[0] for c in factory.calls] == ["sub-02_T2w.nii.gz"]
    assert run(ds, level="group")[0] == 0


# ---------------------------------------------------------------------------------------------
# Progress


def test_the_progress_bar_tells_two_images_of_one_subject_apart():
    with RunProgress(2, bar=True) as progress:
        progress.stage("sub-02_run-1_T2w.nii.gz", "step1_network")
        progress.stage("sub-02_T1w.nii.gz", "read")
        text = progress._bar.postfix  # type: ignore[union-attr]
    assert "sub-02_run-1_T2w:step1_network" in text and "sub-02_T1w:read" in text


# ---------------------------------------------------------------------------------------------
# One image never stops a run


def flat_image(shape: tuple[int, ...]) -> nib.Nifti1Image:
    data = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    return nib.Nifti1Image(data, np.eye(4))


def test_2d_images_fail_alone_named_for_what_they_are(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    nib.save(flat_image((222, 224)), ds / "sub-01/anat/sub-01_acq-axial_T2w.nii.gz")
    nib.save(flat_image((64, 64)), ds / "sub-02/anat/sub-02_acq-axial_T2w.nii.gz")
    for _ in range(2):  # the rerun reports the same, without running anything again
        rc, stdout, stderr, _ = run(ds)
        assert rc == 1
        rows = status_rows(stdout)
        assert rows["sub-01_acq-axial_T2w.nii.gz"][0] == "failed"
        assert (
            "2-D image (shape (222, 224)): SpineSeg needs a greyscale 3D image"
            in rows["sub-01_acq-axial_T2w.nii.gz"][2]
        )
        assert "2-D image (shape (64, 64))" in rows["sub-02_acq-axial_T2w.nii.gz"][2]
        assert {rows[n][0] for n in ("sub-01_T2w.nii.gz", "sub-02_T2w.nii.gz")} <= {
            "ok",
            "skipped",
        }
        assert "SimpleITK" not in stdout + stderr
    assert not list((run.out / "logs").glob("crash-*"))  # bad input, not a bug


def test_a_header_declaring_terabytes_over_a_small_file_is_named_truncated(run, tmp_path):
    ds = make_bids(tmp_path / "ds", TWO)
    header = nib.Nifti1Header()
    header.set_data_shape((20000, 20000, 20000))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path = ds / "sub-02/anat/sub-02_acq-huge_T2w.nii"
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\1" * 2048)
    rc, stdout, _, _ = run(ds)
    assert rc == 1
    reason = status_rows(stdout)["sub-02_acq-huge_T2w.nii"][2]
    assert reason.startswith("header declares 20000x20000x20000 voxels"), reason
    assert "but the file holds only 2048 bytes" in reason
    assert "GiB" not in reason and "--mem-mb" not in reason


# ---------------------------------------------------------------------------------------------
# Exit codes


def test_a_run_that_finds_images_locked_by_another_run_exits_75(run, tmp_path):
    from filelock import FileLock

    ds = make_bids(tmp_path / "ds", TWO)
    locks = run.out / "logs" / "locks"
    locks.mkdir(parents=True)
    held = [FileLock(str(locks / f".{Path(rel).name}.lock")) for rel in TWO]
    for lock in held:
        lock.acquire()  # "another run" (another process in real life)
    try:
        rc, stdout, stderr, factory = run(ds)
        assert rc == 75
        assert factory.engines == []
        assert {row[0] for row in status_rows(stdout).values()} == {"skipped"}
        assert "being segmented by another run" in stdout
        assert error_lines(stderr) == []  # a status, not an error: the table says it all
        held[0].release()
        rc, stdout, _, factory = run(ds)  # one done here, one still held elsewhere
        assert rc == 75 and [c[0] for c in factory.calls] == ["sub-01_T2w.nii.gz"]
    finally:
        for lock in held:
            lock.release()
    assert run(ds)[0] == 0


BROKEN = "sub-02_T2w.nii.gz"
# Every stage of an image, patched where the run looks it up: (module, attribute, stage named).
STAGES = [
    ("bids_app.run.participant", "decide", "resume check"),
    ("bids_app.run.stages.decide", "read_stamp", "resume check"),
    ("bids_app.run.stages.decide", "resume_decision", "resume check"),
    ("bids_app.run.participant", "source_record", "source fingerprint"),
    ("bids_app.run.stages.correct", "CorrectionStage.read", "source fingerprint"),
    ("bids_app.run.stages.segment", "load_image", "read"),
    ("bids_app.run.stages.segment", "check_input_header", "read"),
    ("bids_app.run.stages.segment", "image_memory", "read"),
    ("bids_app.run.stages.write", "WriteStage.run", "write"),
    ("bids_app.run.stages.image_qc", "QCStage.run", "QC"),
    ("bids_app.run.stages.stamp", "write_stamp", "stamp"),
]


def _names_broken(args, kwargs) -> bool:
    """Whether a call concerns the broken image (by name, or by its distinct grid)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, dict):  # e.g. every selected image, by path
            continue
        if "sub-02_T2w" in str(value) or getattr(value, "shape", None) == (9, 11, 13):
            return True
        job = getattr(value, "job", None)
        if job is not None and job.name == BROKEN:
            return True
    return False


@pytest.mark.parametrize(("module", "attribute", "stage"), STAGES, ids=[s[1] for s in STAGES])
def test_a_bug_in_any_stage_fails_that_image_alone(
    run, tmp_path, monkeypatch, module, attribute, stage
):
    ds = make_bids(tmp_path / "ds", TWO)
    nib.save(tiny_image(shape=(9, 11, 13)), ds / "sub-02/anat" / BROKEN)
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)

    def breaks(*args, **kwargs):
        if _names_broken(args, kwargs):
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, breaks)
    rc, stdout, stderr, _ = run(ds)
    assert rc == 1
    rows = status_rows(stdout)
    assert rows["sub-01_T2w.nii.gz"][0] == "ok"
    status, _, reason = rows[BROKEN]
    assert status == "failed"
    assert reason.startswith(f"unexpected RuntimeError: boom (stage: {stage}) (see logs/crash-")
    assert f"{BROKEN}: failed: unexpected RuntimeError: boom" in stderr
    crash = run.out / reason.split("(see ")[1].rstrip(")")
    assert "RuntimeError: boom" in crash.read_text()
    assert error_lines(stderr) == []  # the run itself did not fail


# ---------------------------------------------------------------------------------------------
# The work folder


def test_the_work_dir_holds_the_runs_temporary_files_and_is_emptied(run, tmp_path, monkeypatch):
    from bidsapp_testkit import FakeEngine

    ds = make_bids(tmp_path / "ds", TWO)
    work = tmp_path / "work"
    seen: list[tuple[str, str | None]] = []
    real = FakeEngine.segment

    def segment(self, *args, **kwargs):  # where a library would put its temporary files
        seen.append((tempfile.gettempdir(), os.environ.get("TMPDIR")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FakeEngine, "segment", segment)
    before = tempfile.gettempdir(), os.environ.get("TMPDIR")
    assert run(ds, "-w", work)[0] == 0
    assert len(seen) == 2
    for folder, env in seen:
        assert Path(folder).parent == work.resolve() and env == folder
    assert list(work.iterdir()) == []  # the run's folder is removed at the end
    assert (tempfile.gettempdir(), os.environ.get("TMPDIR")) == before
