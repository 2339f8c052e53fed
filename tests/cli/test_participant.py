"""Participant level with a fake engine: outputs, stamps, resume, failure isolation, inputs."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import pytest
from bidsapp_testkit import FakeEngineFactory, tree_digest

from bids_app import __version__
from bids_app.bids.derivatives import image_output_paths
from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.bids.validation import ValidationReport, find_validator, validate
from bids_app.cli.main import main
from bids_app.run import selection
from bids_app.run.stages import write as write_stage

IMAGES = {
    "sub-01_ses-01_acq-sag_T2w.nii.gz": (
        "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz",
        "T2w",
    ),
    "sub-01_ses-01_T1w.nii.gz": ("sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz", "T1w"),
    "sub-01_ses-02_acq-sag_T2w.nii.gz": (
        "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz",
        "T2w",
    ),
    "sub-02_run-1_T2w.nii.gz": ("sub-02/anat/sub-02_run-1_T2w.nii.gz", "T2w"),
    "sub-02_T1w.nii.gz": ("sub-02/anat/sub-02_T1w.nii.gz", "T1w"),
}


@pytest.fixture
def run(dataset, weights, tmp_path, capsys):
    """Run the participant level into tmp_path/out; returns (rc, stdout, stderr, factory)."""
    out = tmp_path / "out"

    def _run(*extra, fail=(), partial=(), raises=None, bids_dir=None):
        factory = FakeEngineFactory(fail, partial, raises)
        argv = [
            bids_dir or dataset,
            out,
            "participant",
            "--skip-bids-validation",
            "--weights",
            weights,
            *extra,
        ]
        rc = main([str(a) for a in argv], engine_factory=factory)
        stdout, stderr = capsys.readouterr()
        assert "Traceback" not in stderr
        return rc, stdout, stderr, factory

    _run.out = out
    return _run


def stamp(out: Path, name: str) -> dict:
    return read_stamp(stamp_path(out, name))


def status_rows(stdout: str) -> dict[str, list[str]]:
    table = stdout.split("Status:\n")[1].splitlines()[1:]
    return {line.split()[2]: line.split(None, 5)[3:] for line in table}


def test_full_run_writes_outputs_and_stamps_then_resumes_without_work(run):
    rc, stdout, _, factory = run()
    out = run.out
    assert rc == 0
    assert len(factory.engines) == 1  # one engine for every image
    assert sorted(c[0] for c in factory.calls) == sorted(IMAGES)
    for name, (rel, suffix) in IMAGES.items():
        s = stamp(out, name)
        assert s["status"] == "ok" and s["reason"] is None
        assert s["source"] == rel and s["app_version"] == __version__
        expected = set(image_output_paths(rel, suffix, iso=False).values())
        assert expected <= set(s["outputs"])
        assert all((out / o).is_file() for o in s["outputs"])
    assert {row[0] for row in status_rows(stdout).values()} == {"ok"}
    assert len(list((out / "logs").glob("spineseg-*.log"))) == 1

    rc, stdout, _, factory = run()
    assert rc == 0
    assert factory.engines == []  # nothing to do: the engine (torch, models) is never loaded
    assert {row[0] for row in status_rows(stdout).values()} == {"skipped"}

    rc, stdout, _, factory = run("--overwrite")
    assert rc == 0 and len(factory.calls) == len(IMAGES)


def test_changed_options_recompute_with_a_warning_and_drop_stale_outputs(run):
    run("--participant-label", "02")
    rc, _, stderr, factory = run("--participant-label", "02", "--iso")
    assert rc == 0 and len(factory.calls) == 2
    assert "made with other options" in stderr
    s = stamp(run.out, "sub-02_T1w.nii.gz")
    iso = [o for o in s["outputs"] if "res-1mm" in o]
    assert len(iso) == 10 and all((run.out / o).is_file() for o in iso)
    assert s["options"]["iso"] is True
    rc, _, _, factory = run("--participant-label", "02")
    assert rc == 0 and len(factory.calls) == 2
    assert not any((run.out / o).exists() for o in iso)  # this run no longer makes them


def test_new_app_version_or_missing_stamp_recomputes(run):
    run()
    path = stamp_path(run.out, "sub-02_T1w.nii.gz")
    data = json.loads(path.read_text())
    data["app_version"] = "0.0.1"
    path.write_text(json.dumps(data))
    stamp_path(run.out, "sub-02_run-1_T2w.nii.gz").unlink()  # as if killed before the stamp
    rc, _, stderr, factory = run()
    assert rc == 0
    assert sorted(c[0] for c in factory.calls) == ["sub-02_T1w.nii.gz", "sub-02_run-1_T2w.nii.gz"]
    assert "made by spineseg 0.0.1" in stderr


def test_one_failing_image_fails_alone(run):
    rc, stdout, _, _ = run(fail={"sub-01_ses-01_T1w.nii.gz"})
    assert rc == 1
    rows = status_rows(stdout)
    assert rows["sub-01_ses-01_T1w.nii.gz"][0] == "failed"
    assert "no spine structure" in rows["sub-01_ses-01_T1w.nii.gz"][2]
    assert [r[0] for n, r in rows.items() if n != "sub-01_ses-01_T1w.nii.gz"] == ["ok"] * 4
    failed = stamp(run.out, "sub-01_ses-01_T1w.nii.gz")
    assert failed["status"] == "failed" and failed["outputs"] == []
    assert "no spine structure" in failed["reason"]
    logs = list((run.out / "logs").glob("spineseg-*.log"))
    assert "no spine structure" in logs[0].read_text()


def test_a_failure_with_the_same_version_options_and_model_is_not_recomputed(run):
    bad = "sub-01_ses-01_T1w.nii.gz"
    run(fail={bad})
    rc, stdout, _, factory = run(fail={bad})
    assert factory.engines == []  # a rerun of a finished dataset loads nothing
    assert rc == 1  # ...and still says that an image failed
    status, _, reason = status_rows(stdout)[bad]
    assert status == "failed"
    assert reason.startswith("failed before with the same version, options and model: ")
    assert "no spine structure" in reason and reason.endswith("--retry-failed to try again")
    rc, _, _, factory = run("--retry-failed", fail={bad})
    assert rc == 1 and [c[0] for c in factory.calls] == [bad]
    rc, stdout, _, factory = run("--retry-failed")
    assert rc == 0 and [c[0] for c in factory.calls] == [bad]
    assert status_rows(stdout)[bad][0] == "ok"


def test_out_of_memory_is_retried_on_the_next_run(run):
    name = "sub-02_T1w.nii.gz"
    rc, stdout, _, _ = run(raises={name: MemoryError()})
    assert rc == 1
    assert status_rows(stdout)[name][2].startswith("out of memory")
    rc, _, _, factory = run()
    assert rc == 0 and [c[0] for c in factory.calls] == [name]


def test_partial_results_have_their_own_exit_code_and_stay_done(run):
    name = "sub-02_T1w.nii.gz"
    rc, stdout, _, _ = run(partial={name})
    assert rc == 3
    status, _, reason = status_rows(stdout)[name]
    assert status == "partial" and "no landmark disc" in reason
    rc, stdout, _, factory = run(partial={name})
    assert rc == 3 and factory.engines == []
    assert status_rows(stdout)[name][0] == "partial"
    assert "--retry-failed" in status_rows(stdout)[name][2]
    rc, _, _, _ = run("--overwrite", partial={name}, fail={"sub-02_run-1_T2w.nii.gz"})
    assert rc == 1  # a failure outranks a partial result


def test_an_unexpected_error_keeps_its_traceback_in_a_crash_file(run):
    name = "sub-02_T1w.nii.gz"
    rc, stdout, stderr, _ = run(raises={name: KeyError("spacing")})
    assert rc == 1
    status, _, reason = status_rows(stdout)[name]
    assert status == "failed"
    assert reason.startswith("unexpected KeyError: 'spacing' (see logs/crash-")
    crash_rel = reason.rsplit("(see ", 1)[1].rstrip(")")
    assert crash_rel.endswith("-sub-02_T1w.txt")
    text = (run.out / crash_rel).read_text()
    assert "Traceback (most recent call last)" in text and "KeyError: 'spacing'" in text
    assert "sub-02/anat/sub-02_T1w.nii.gz" in text and __version__ in text
    assert stamp(run.out, name)["crash_file"] == crash_rel
    log = next((run.out / "logs").glob("spineseg-*.log")).read_text()
    assert crash_rel in log and "Traceback" not in log
    assert crash_rel in stderr


def test_failure_reasons_name_the_file_once(run, dataset):
    path = dataset / IMAGES["sub-02_T1w.nii.gz"][0]
    path.write_bytes(b"this is not a nifti file at all" * 20)
    rc, stdout, _, _ = run()
    assert rc == 1
    reason = status_rows(stdout)["sub-02_T1w.nii.gz"][2]
    assert reason.startswith("cannot read the image") and "sub-02_T1w" not in reason
    log = next((run.out / "logs").glob("spineseg-*.log")).read_text()
    line = next(ln for ln in log.splitlines() if "failed:" in ln)
    assert line.count("sub-02_T1w.nii.gz") == 1
    assert stamp(run.out, "sub-02_T1w.nii.gz")["reason"] == reason


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("garbage", "cannot read the image (not a gzip file"),
        # the size the header declares is checked against the file before anything is read
        ("truncated", "header declares 8x10x12 voxels (1920 bytes) but the file holds only 100"),
        ("header-only", "header declares 8x10x12 voxels (1920 bytes) but the file holds only 0"),
    ],
)
def test_corrupt_file_fails_alone_with_a_reason(run, dataset, damage, expected):
    path = dataset / IMAGES["sub-02_T1w.nii.gz"][0]
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a nifti file at all" * 20)
    else:  # header intact, data cut short: fails only when the voxels are read
        raw = gzip.decompress(data)
        path.write_bytes(gzip.compress(raw[: 352 + (100 if damage == "truncated" else 0)]))
    rc, stdout, _, _ = run()
    assert rc == 1
    rows = status_rows(stdout)
    assert rows["sub-02_T1w.nii.gz"][0] == "failed"
    assert rows["sub-02_T1w.nii.gz"][2].startswith(expected)
    assert sum(r[0] == "ok" for r in rows.values()) == 4


def test_input_is_never_modified_and_may_be_read_only(run, dataset):
    before = tree_digest(dataset)
    paths = [dataset, *dataset.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        rc, _, _, _ = run()
        assert rc == 0
        assert tree_digest(dataset) == before
        assert all(p.stat().st_mode & 0o222 == 0 for p in paths)
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize(
    "option", [["--localizer-suffix", "T1w"], ["--localizer", '{"suffix": "T1w"}']]
)
def test_localizer_is_segmented_first_and_guides_its_session(run, option):
    rc, _, _, factory = run(*option)
    assert rc == 0
    calls = factory.calls
    assert calls.index(("sub-01_ses-01_T1w.nii.gz", False)) < calls.index(
        ("sub-01_ses-01_acq-sag_T2w.nii.gz", True)
    )
    assert ("sub-02_run-1_T2w.nii.gz", True) in calls
    assert ("sub-01_ses-02_acq-sag_T2w.nii.gz", False) in calls  # no localizer in ses-02
    guided = stamp(run.out, "sub-01_ses-01_acq-sag_T2w.nii.gz")
    loc = "sub-01/ses-01/anat/sub-01_ses-01_seg-spine_desc-T1w_dseg.nii.gz"
    assert guided["options"]["localizer"] == loc
    final = next(o for o in guided["outputs"] if o.endswith("seg-spine_desc-T2w_dseg.json"))
    assert f"bids::{loc}" in json.loads((run.out / final).read_text())["Sources"]


def test_failed_localizer_leaves_the_session_unguided_with_a_warning(run):
    rc, _, _, factory = run("--localizer-suffix", "T1w", fail={"sub-02_T1w.nii.gz"})
    assert rc == 1
    assert ("sub-02_run-1_T2w.nii.gz", False) in factory.calls
    s = stamp(run.out, "sub-02_run-1_T2w.nii.gz")
    assert s["status"] == "ok" and s["options"]["localizer"] is None
    assert any("localizer sub-02_T1w.nii.gz has no labels" in w for w in s["warnings"])


def test_step1_only_writes_no_final_labels(run):
    rc, _, _, _ = run("--step1-only", "--participant-label", "02")
    assert rc == 0
    s = stamp(run.out, "sub-02_T1w.nii.gz")
    assert s["status"] == "ok"
    assert not any(o.endswith("_dseg.nii.gz") and "seg-spine" in o for o in s["outputs"])
    assert any(o.endswith("seg-step1_desc-T1w_dseg.nii.gz") for o in s["outputs"])


def test_write_failure_stops_with_74_and_no_ok_stamp(run, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/sub-01/x.nii.gz")

    monkeypatch.setattr(write_stage, "write_image_outputs", disk_full)
    rc, _, stderr, _ = run()
    assert rc == 74
    assert stderr.strip().splitlines()[-1] == (
        "spineseg: error: /out/sub-01/x.nii.gz: cannot write outputs (No space left on device)"
    )
    assert not list((run.out / "logs" / "status").glob("*.json"))


@pytest.mark.with_qc
def test_qc_reports_and_group_level_on_the_written_outputs(run, dataset, capsys):
    rc, _, _, _ = run("--participant-label", "02")
    assert rc == 0
    s = stamp(run.out, "sub-02_run-1_T2w.nii.gz")
    qc_json = "sub-02/anat/sub-02_run-1_seg-spine_desc-T2w_qc.json"
    assert qc_json in s["outputs"]
    assert any(o.startswith("sub-02/figures/") and o.endswith(".png") for o in s["outputs"])
    assert all((run.out / o).is_file() for o in s["outputs"])
    report = run.out / "sub-02.html"
    assert "sub-02_run-1" in report.read_text()
    report.unlink()
    argv = [dataset, run.out, "participant", "--skip-bids-validation", "--reports-only"]
    assert main([str(a) for a in argv]) == 0
    assert report.is_file()
    assert main([str(dataset), str(run.out), "group"]) == 0
    assert (run.out / "group.html").is_file()
    capsys.readouterr()
    if find_validator() is not None:
        result = validate(run.out)
        assert result.errors == [], result.error_lines()


def test_reports_only_needs_no_engine_and_no_weights(run, tmp_path, dataset, capsys):
    run()
    argv = [
        dataset,
        run.out,
        "participant",
        "--skip-bids-validation",
        "--reports-only",
        "--weights",
        tmp_path / "missing",
    ]
    factory = FakeEngineFactory()
    rc = main([str(a) for a in argv], engine_factory=factory)
    capsys.readouterr()
    assert rc == 0 and factory.engines == []


def test_group_level_checks_the_participant_outputs(run, dataset, capsys):
    argv = [str(dataset), str(run.out), "group"]
    assert main(argv) == 66
    assert "run the participant level first" in capsys.readouterr().err
    run()
    assert main([*argv, "--participant-label", "05"]) == 18
    assert "no participant-level records for participant(s) 05" in capsys.readouterr().err


def test_validator_warnings_are_logged_by_code(dataset, weights, tmp_path, capsys, monkeypatch):
    issues = [
        {"code": "SIDECAR_KEY_RECOMMENDED", "subCode": "Manufacturer", "location": f"/f{i}.json"}
        for i in range(150)
    ] + [{"code": "README_FILE_SMALL", "location": "/README"}] * 2
    report = ValidationReport(0, [], issues)
    monkeypatch.setattr(selection, "validate", lambda target: report)
    out = tmp_path / "out"
    argv = [dataset, out, "participant", "--weights", weights, "--participant-label", "02"]
    assert main([str(a) for a in argv], engine_factory=FakeEngineFactory()) == 0
    err = capsys.readouterr().err
    log = next((out / "logs").glob("spineseg-*.log"))
    assert f"152 warning(s) of 2 kinds; by code (also in the log {log})" in err
    text = log.read_text()
    assert "SIDECAR_KEY_RECOMMENDED (Manufacturer): 150, e.g. /f0.json, /f1.json, /f2.json" in text
    assert "README_FILE_SMALL: 2, e.g. /README" in text


def plan_of(stdout: str) -> dict[str, str]:
    """Dry-run lines: image name -> what would be done and why."""
    lines = stdout.split("Dry run")[1].splitlines()[1:]
    return {ln.split(": ", 2)[1]: ln.split(": ", 2)[2] for ln in lines if ": would " in ln}


def test_dry_run_prints_the_plan_and_writes_nothing(run, tmp_path):
    no_weights = tmp_path / "no-weights"
    rc, stdout, _, factory = run("--dry-run", "--weights", no_weights)
    assert rc == 0 and factory.engines == [] and not run.out.exists()
    plan = plan_of(stdout)
    assert plan == {name: "would segment: no previous result" for name in IMAGES}
    assert "  sub-01 ses-01: sub-01_ses-01_T1w.nii.gz: would segment" in stdout

    bad, half = "sub-01_ses-01_T1w.nii.gz", "sub-02_T1w.nii.gz"
    run(fail={bad}, partial={half})
    before = tree_digest(run.out)
    rc, stdout, _, factory = run("--dry-run", "--weights", no_weights)
    assert rc == 0 and factory.engines == [] and tree_digest(run.out) == before
    plan = plan_of(stdout)
    assert plan[bad].startswith("would skip: failed before with the same version and options: ")
    assert plan[half].startswith("would skip: ended partial before with the same version and")
    ok = "sub-02_run-1_T2w.nii.gz"
    assert plan[ok] == "would skip: already done with the same version and options"
    assert "still recomputed if the model changed" in stdout
    plan = plan_of(run("--dry-run", "--retry-failed", "--weights", no_weights)[1])
    assert plan[bad].startswith("would segment: previous run ended 'failed'")
    assert plan[ok].startswith("would skip")
    plan = plan_of(run("--dry-run", "--iso", "--weights", no_weights)[1])
    assert set(plan.values()) == {"would segment: previous result made with other options"}
    assert tree_digest(run.out) == before
