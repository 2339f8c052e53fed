"""The BIDS-App command-line contract: help, version, exit codes, checks before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bidsapp_testkit import FakeEngineFactory, make_bids

from bids_app.bids.validation import find_validator
from bids_app.cli.app import expand_labels
from bids_app.cli.main import main
from bids_app.plumbing.errors import ExitCode, UserError

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *argv, factory=None) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv], engine_factory=factory or FakeEngineFactory())
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def participant(dataset, out, *extra, weights, capsys, factory=None):
    return cli(
        capsys,
        dataset,
        out,
        "participant",
        "--skip-bids-validation",
        "--weights",
        weights,
        *extra,
        factory=factory,
    )


def test_help_lists_every_exit_code_and_the_subcommands(capsys):
    rc, out, _ = cli(capsys, "--help")
    assert rc == 0
    block = out.split("exit codes:")[1].split("\n\n")[0].splitlines()
    codes = {line.split()[0] for line in block if line[:3].strip().isdigit()}
    assert codes == {str(int(code)) for code in ExitCode}
    for word in (
        "--participant-label",
        "--bids-filter-file",
        "--localizer-suffix",
        "segment",
        "weights",
        "phantoms",
        "{participant,group}",
    ):
        assert word in out


def test_version_prints_the_version_file(capsys):
    rc, out, _ = cli(capsys, "--version")
    assert rc == 0
    assert out.strip() == f"spineseg {(REPO / 'version').read_text().strip()}"


@pytest.mark.parametrize(
    "argv",
    [
        ["bids", "out", "participant", "--no-such-option"],
        ["bids", "out"],
        ["bids", "out", "participant", "--nprocs", "0"],
        ["bids", "out", "participant", "--device", "gpu"],
        ["segment"],
        ["weights", "--bogus"],
        ["phantoms", "x", "--subjects", "-1"],
    ],
)
def test_usage_errors_exit_64(capsys, argv):
    rc, _, err = cli(capsys, *argv)
    assert rc == 64
    assert "error:" in err


def test_bad_analysis_level_exits_17(capsys, tmp_path):
    rc, _, err = cli(capsys, tmp_path, tmp_path / "out", "subject")
    assert rc == 17
    assert (
        err.strip()
        == "spineseg: error: analysis level 'subject': must be one of participant, group"
    )


def test_output_dir_checks(capsys, dataset, weights):
    rc, _, err = participant(dataset, dataset, weights=weights, capsys=capsys)
    assert rc == 64 and "derivatives/spineseg" in err
    rc, _, err = participant(dataset, dataset / "out", weights=weights, capsys=capsys)
    assert rc == 64 and "only derivatives/<name>" in err
    rc, _, err = participant(
        dataset, dataset / "derivatives" / "a" / "b", weights=weights, capsys=capsys
    )
    assert rc == 64
    rc, _, err = participant(
        dataset, dataset.parent / "out", "-w", dataset / "work", weights=weights, capsys=capsys
    )
    assert rc == 64 and "work dir" in err
    assert not (dataset.parent / "out").exists()  # refused before anything was created
    rc, _, _ = participant(
        dataset, dataset / "derivatives" / "spineseg", weights=weights, capsys=capsys
    )
    assert rc == 0


def test_output_that_cannot_be_created_exits_73(capsys, dataset, weights, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, _, err = participant(dataset, blocker / "out", weights=weights, capsys=capsys)
    assert rc == 73 and "cannot create the output folder" in err


def test_dataset_description_must_be_readable_json(capsys, dataset, weights, tmp_path):
    (dataset / "dataset_description.json").write_text("{oops")
    rc, _, err = participant(dataset, tmp_path / "out", weights=weights, capsys=capsys)
    assert rc == 16 and "dataset_description.json: not valid JSON" in err
    (dataset / "dataset_description.json").unlink()
    rc, _, err = participant(dataset, tmp_path / "out", weights=weights, capsys=capsys)
    assert rc == 16 and "is this a BIDS dataset?" in err


def test_label_parsing_with_and_without_prefix_and_from_a_file(tmp_path):
    assert expand_labels(["sub-01", "02", "01"], "sub-", "--participant-label") == ["01", "02"]
    listing = tmp_path / "participants.tsv"
    listing.write_text("participant_id\tage\nsub-03\t40\n# excluded: sub-09\n\n04\t33\n")
    assert expand_labels([str(listing)], "sub-", "--participant-label") == ["03", "04"]
    assert expand_labels(["ses-pre"], "ses-", "--session-label") == ["pre"]
    assert expand_labels(None, "sub-", "x") is None
    with pytest.raises(UserError, match="letters and digits only") as info:
        expand_labels(["sub-0_1"], "sub-", "--participant-label")
    assert info.value.code == 64


def test_participant_labels_select_subjects(capsys, dataset, weights, tmp_path):
    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-02\n")
    for labels in (["sub-02"], ["02"], [listing]):
        factory = FakeEngineFactory()
        rc, out, _ = participant(
            dataset,
            tmp_path / "out",
            "--participant-label",
            *labels,
            "--overwrite",
            weights=weights,
            capsys=capsys,
            factory=factory,
        )
        assert rc == 0
        assert sorted(c[0] for c in factory.calls) == [
            "sub-02_T1w.nii.gz",
            "sub-02_run-1_T2w.nii.gz",
        ]
        assert "Selection: 1 subject(s), 2 image(s)" in out


def test_labels_come_from_a_file_only_when_the_user_says_so(
    capsys, dataset, weights, tmp_path, monkeypatch
):
    """A file in the current folder named like a label is not read; @FILE is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "01").write_text("sub-02\n")  # named like the label the user typed
    (tmp_path / "sub-02").write_text("sub-01\n")
    (tmp_path / "mine").write_text("# who\nsub-02\n")  # no .txt: only @mine makes it a file
    for label, subject in (("01", "sub-01"), ("sub-02", "sub-02"), ("@mine", "sub-02")):
        factory = FakeEngineFactory()
        rc, _, err = participant(
            dataset,
            tmp_path / "out",
            "--participant-label",
            label,
            "--overwrite",
            weights=weights,
            capsys=capsys,
            factory=factory,
        )
        assert rc == 0, err
        assert factory.calls and {c[0].split("_")[0] for c in factory.calls} == {subject}, label


@pytest.mark.parametrize("value", ["@absent", "@absent.txt", "absent.tsv", "@"])
def test_a_missing_label_file_is_one_line_and_exit_64(capsys, dataset, weights, tmp_path, value):
    rc, _, err = participant(
        dataset, tmp_path / "out", "--participant-label", value, weights=weights, capsys=capsys
    )
    lines = err.strip().splitlines()
    assert rc == 64 and len(lines) == 1, err
    assert lines[0].startswith("spineseg: error: --participant-label ")
    assert "cannot read" in lines[0]
    assert not (tmp_path / "out").exists()


def test_selection_errors(capsys, dataset, weights, tmp_path):
    out = tmp_path / "out"
    rc, _, err = participant(
        dataset, out, "--participant-label", "07", weights=weights, capsys=capsys
    )
    # A participant asked for that does not exist has no usable image: 66, naming it.
    assert rc == 66 and "sub-07 (not in the dataset, which has sub-01, sub-02)" in err
    rc, _, err = participant(
        dataset, out, "--session-label", "ses-09", weights=weights, capsys=capsys
    )
    assert rc == 18 and "session label(s) not found" in err
    rc, _, err = participant(dataset, out, "--suffix", "FLAIR", weights=weights, capsys=capsys)
    assert rc == 18 and "selected no image" in err
    # sub-02 has no session, so asking for it with --session-label 01 leaves it empty: 66.
    rc, _, err = participant(
        dataset,
        out,
        "--participant-label",
        "01",
        "02",
        "--session-label",
        "01",
        weights=weights,
        capsys=capsys,
    )
    assert rc == 66 and "sub-02" in err


def test_filter_file(capsys, dataset, weights, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"t2w": {"acquisition": "sag", "session": "02"}, "t1w": {"run": 5}}))
    factory = FakeEngineFactory()
    rc, out, _ = participant(
        dataset,
        tmp_path / "out",
        "--bids-filter-file",
        filt,
        weights=weights,
        capsys=capsys,
        factory=factory,
    )
    assert rc == 0
    assert [c[0] for c in factory.calls] == ["sub-01_ses-02_acq-sag_T2w.nii.gz"]
    assert '"acquisition": "sag"' in out
    filt.write_text(json.dumps({"t2w": {"acquisition": "axial"}, "t1w": {"run": 5}}))
    rc, _, err = participant(
        dataset, tmp_path / "out", "--bids-filter-file", filt, weights=weights, capsys=capsys
    )
    assert rc == 18 and '"acquisition": "axial"' in err
    filt.write_text(json.dumps({"dwi": {}}))
    rc, _, err = participant(
        dataset, tmp_path / "out", "--bids-filter-file", filt, weights=weights, capsys=capsys
    )
    assert rc == 64 and "filter.json: image kind 'dwi' is not selected" in err
    filt.write_text(json.dumps({"localizer": {"acquisition": "sag"}}))
    rc, _, err = participant(
        dataset, tmp_path / "out", "--bids-filter-file", filt, weights=weights, capsys=capsys
    )
    assert rc == 64 and "--localizer-suffix" in err


def test_selection_is_printed_before_any_work(capsys, dataset, weights, tmp_path):
    seen_before_engine = []

    class Watching(FakeEngineFactory):
        def __call__(self, *args):
            seen_before_engine.append(capsys.readouterr().out)
            return super().__call__(*args)

    rc, out, _ = participant(
        dataset, tmp_path / "out", weights=weights, capsys=capsys, factory=Watching()
    )
    assert rc == 0
    printed = seen_before_engine[0]
    assert "Effective queries" in printed and '"suffix": "T2w"' in printed
    assert (
        "Selection: 2 subject(s) (1 without sessions), "
        "2 subject-session pair(s) (sessions: 01, 02), 5 image(s)"
    ) in printed
    assert "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz" in printed
    assert "Status:" in out


def test_weights_from_the_environment(capsys, dataset, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("SPINESEG_WEIGHTS", str(weights))
    rc, out, _ = cli(capsys, dataset, tmp_path / "out", "participant", "--skip-bids-validation")
    assert rc == 0 and f"({weights})" in out


def test_missing_weights_exit_78(capsys, dataset, tmp_path):
    rc, _, err = participant(dataset, tmp_path / "out", weights=tmp_path / "none", capsys=capsys)
    assert rc == 78 and "weights folder not found" in err


def test_unusable_device_is_one_line_exit_64_before_any_output(capsys, dataset, weights, tmp_path):
    # This machine has no GPU: the check happens before the output folder is even made.
    out = tmp_path / "out"
    rc, _, err = participant(dataset, out, "--device", "cuda", weights=weights, capsys=capsys)
    assert rc == 64
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [err.strip().splitlines()[-1]]
    assert errors[0].startswith("spineseg: error: --device cuda: device 'cuda': CUDA")
    assert "--gpus all" in errors[0]
    assert not out.exists()


def test_device_lists_are_checked_by_the_parser(capsys, dataset, weights, tmp_path):
    rc, _, err = participant(
        dataset, tmp_path / "out", "--device", "cuda:0,auto", weights=weights, capsys=capsys
    )
    assert rc == 64 and "auto cannot be combined" in err


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
def test_invalid_input_dataset_exits_16_unless_skipped(capsys, tmp_path, weights):
    ds = make_bids(
        tmp_path / "ds", ["sub-01/anat/sub-01_T2w.nii.gz", "sub-01/anat/sub-01_bad.nii.gz"]
    )
    rc, _, err = cli(capsys, ds, tmp_path / "out", "participant", "--weights", weights)
    assert rc == 16
    assert "NOT_INCLUDED: /sub-01/anat/sub-01_bad.nii.gz" in err
    assert err.strip().splitlines()[-1].startswith("spineseg: error: ")
    rc, _, _ = cli(
        capsys, ds, tmp_path / "out", "participant", "--weights", weights, "--skip_bids_validator"
    )
    assert rc == 0


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
def test_validation_covers_only_the_selected_participants(capsys, tmp_path, weights):
    ds = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T2w.nii.gz",
            "sub-02/anat/sub-02_T2w.nii.gz",
            "sub-02/anat/sub-02_bad.nii.gz",
        ],
    )
    rc, _, _ = cli(
        capsys,
        ds,
        tmp_path / "out",
        "participant",
        "--weights",
        weights,
        "--participant-label",
        "01",
        "-w",
        tmp_path / "work",
    )
    assert rc == 0


def test_a_bug_exits_70_with_one_line_and_a_crash_file(
    capsys, dataset, weights, tmp_path, monkeypatch
):
    from bids_app.run import participant as run_module

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(run_module, "write_dataset_files", broken)
    out = tmp_path / "out"
    rc, _, err = participant(dataset, out, weights=weights, capsys=capsys)
    assert rc == 70
    last = err.strip().splitlines()[-1]
    assert last.startswith("spineseg: error: unexpected ZeroDivisionError: division by zero")
    crash = Path(re.search(r"traceback in (\S+);", last).group(1))
    assert crash.parent == out / "logs" and crash.name.startswith("crash-")
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "1 / 0" in text
    log = next((out / "logs").glob("spineseg-*.log")).read_text()
    assert str(crash) in log
