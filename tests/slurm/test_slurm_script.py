"""The SLURM script writer: what `--slurm-script` writes, and what a task then runs.

The scripts are executed with bash (no scheduler) with `spineseg` or `apptainer` replaced by a
stub that records its arguments, so the tests see the exact command line a task gets after
the shell's quoting; that command line is then run with the fake engine. The real scheduler
is exercised by tests/slurm/run_slurm_test.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from bidsapp_testkit import FakeEngineFactory

from bids_app.bids import discovery as disc
from bids_app.cli.main import main
from bids_app.cli.parser import bids_app_parser
from bids_app.run import slurm

RECORDER = '#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n'


@pytest.fixture
def gen(tmp_path, dataset, weights, monkeypatch, capsys):
    """Run `spineseg ds out participant --slurm-script jobs/run.sh ...` from tmp_path."""
    monkeypatch.chdir(tmp_path)
    stub = tmp_path / "bin" / "spineseg"
    stub.parent.mkdir()
    stub.write_text(RECORDER)
    stub.chmod(0o755)
    monkeypatch.setattr(slurm, "local_command", lambda: [str(stub)])

    def _gen(*options: str, level: str = "participant") -> tuple[int, str, str]:
        argv = ["ds", "out", level, "--skip-bids-validation", "--weights", str(weights)]
        rc = main([*argv, "--slurm-script", "jobs/run.sh", *options])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, err

    _gen.argv = ["ds", "out", "participant", "--skip-bids-validation", "--weights", str(weights)]
    return _gen


def run_task(tmp_path: Path, script: Path, task: int, **env: str) -> list[str]:
    """Execute an array script as task `task` would; returns the recorded program arguments."""
    record = tmp_path / f"args-{task}.txt"
    environ = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_CPUS_PER_TASK": "3",
        "ARGS_OUT": str(record),
        **env,
    }
    subprocess.run(["bash", str(script)], cwd=tmp_path, env=environ, check=True)
    return record.read_text().splitlines()


def sbatch(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))


# ---------------------------------------------------------------------------------------------
# Writing


def test_scripts_carry_the_resources_and_one_task_per_participant(gen, tmp_path):
    rc, out, _ = gen(
        "--nprocs", "2", "--slurm-mem", "8g", "--slurm-time", "1-00", "--slurm-gpus", "1",
        "--slurm-partition", "gpu", "--slurm-account", "lab1", "--slurm-throttle", "5",
    )  # fmt: skip
    assert rc == 0
    array, group = tmp_path / "jobs" / "run.sh", tmp_path / "jobs" / "run_group.sh"
    assert sbatch(array) == {
        "job-name": "spineseg",
        "array": "0-1%5",  # sub-01, sub-02
        "cpus-per-task": "2",
        "mem": "8G",
        "time": "1-00",
        "gpus-per-task": "1",
        "partition": "gpu",
        "account": "lab1",
        "chdir": str(tmp_path),
        "output": f"{tmp_path}/out/logs/slurm/%x_%A_%a.out",
    }
    assert (tmp_path / "out" / "logs" / "slurm").is_dir()  # sbatch does not create it
    group_lines = sbatch(group)
    assert group_lines["partition"] == "gpu" and group_lines["account"] == "lab1"
    assert "gpus-per-task" not in group_lines
    assert group_lines["output"] == f"{tmp_path}/out/logs/slurm/%x_%j.out"
    for script in (array, group):
        assert os.access(script, os.X_OK)
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert f"array=$(sbatch --parsable {array})" in out
    assert f'sbatch --dependency=afterany:"$array" {group}' in out


def test_group_script_runs_the_group_level_on_the_output(gen, tmp_path):
    assert gen()[0] == 0
    args = run_task(tmp_path, tmp_path / "jobs" / "run_group.sh", 0)
    assert args == [str(tmp_path / "ds"), str(tmp_path / "out"), "group"]


def test_without_nprocs_a_task_uses_its_slurm_cpus(gen, tmp_path):
    assert gen()[0] == 0
    array = tmp_path / "jobs" / "run.sh"
    assert sbatch(array)["cpus-per-task"] == str(slurm.DEFAULT_CPUS)
    assert run_task(tmp_path, array, 0)[-2:] == ["--nprocs", "3"]  # $SLURM_CPUS_PER_TASK


def test_task_gets_the_typed_options_and_runs_only_its_participant(gen, tmp_path, monkeypatch):
    options = ["--participant-label", "sub-01", "02", "--slurm-mem=4G", "--iso", "-v"]
    assert gen(*options, "--nprocs", "1")[0] == 0
    selection = tmp_path / "jobs" / "run_selection.json"
    args = run_task(tmp_path, tmp_path / "jobs" / "run.sh", 1)
    typed = [*gen.argv, "--participant-label", "sub-01", "02", "--iso", "-v", "--nprocs", "1"]
    assert args == [*typed, "--frozen-selection", str(selection), "--participant-label", "02"]

    def no_pybids(*a, **k):
        raise AssertionError("a task indexed the dataset")

    monkeypatch.setattr(disc, "discover", no_pybids)
    factory = FakeEngineFactory()
    assert main(args, engine_factory=factory) == 0
    assert sorted(name for name, _ in factory.calls) == [
        "sub-02_T1w.nii.gz",
        "sub-02_run-1_T2w.nii.gz",
    ]
    stamps = sorted(p.name for p in (tmp_path / "out" / "logs" / "status").iterdir())
    assert stamps == ["sub-02_T1w.json", "sub-02_run-1_T2w.json"]


def test_per_session_tasks(gen, tmp_path, monkeypatch):
    assert gen("--slurm-per-session")[0] == 0
    array = tmp_path / "jobs" / "run.sh"
    assert sbatch(array)["array"] == "0-2"  # sub-01 ses-01, sub-01 ses-02, sub-02

    def task_args(i: int) -> list[str]:
        return run_task(tmp_path, array, i)

    tails = [args[args.index("--frozen-selection") + 2 :] for args in map(task_args, range(3))]
    assert tails == [
        ["--participant-label", "01", "--session-label", "01", "--nprocs", "3"],
        ["--participant-label", "01", "--session-label", "02", "--nprocs", "3"],
        ["--participant-label", "02", "--nprocs", "3"],  # no sessions: all of sub-02's images
    ]
    factory = FakeEngineFactory()
    assert main(run_task(tmp_path, array, 1), engine_factory=factory) == 0
    assert [name for name, _ in factory.calls] == ["sub-01_ses-02_acq-sag_T2w.nii.gz"]


def test_container_binds_every_path_at_its_own_place(gen, tmp_path):
    (tmp_path / "spineseg.sif").write_bytes(b"")
    assert gen("--container", "spineseg.sif", "--slurm-gpus", "1", "-w", "work")[0] == 0
    apptainer = tmp_path / "bin" / "apptainer"
    shutil.copy(tmp_path / "bin" / "spineseg", apptainer)
    args = run_task(tmp_path, tmp_path / "jobs" / "run.sh", 0, CUDA_VISIBLE_DEVICES="1")
    sif = args.index(str(tmp_path / "spineseg.sif"))
    head, task = args[:sif], args[sif + 1 :]
    assert head[:5] == ["run", "--cleanenv", "--containall", "--nv", "--env"]
    assert head[5] == "CUDA_VISIBLE_DEVICES=1"
    assert head[head.index("--pwd") + 1] == str(tmp_path)
    binds = [head[i + 1] for i, a in enumerate(head) if a == "-B"]
    t, ds = tmp_path, tmp_path / "ds"
    assert binds[0] == f"{t}:{t}:ro"  # the parent before the folders inside it
    assert {
        f"{ds}:{ds}:ro",
        f"{t}/out:{t}/out",
        f"{t}/work:{t}/work",
        f"{t}/jobs:{t}/jobs:ro",
    } < set(binds)
    assert binds[-1] == f"{os.environ.get('SLURM_TMPDIR', '/tmp')}:/tmp"
    assert task[:3] == ["ds", "out", "participant"] and "--container" not in task

    assert gen("--container", "spineseg.sif")[0] == 0  # no GPU asked for: no --nv
    assert "--nv" not in run_task(tmp_path, tmp_path / "jobs" / "run.sh", 0)


# ---------------------------------------------------------------------------------------------
# The command line


def test_strip_slurm_options_keeps_every_other_token_as_typed():
    argv = [
        "ds", "out", "participant", "--slurm-script=x.sh", "--slurm-thr", "2",
        "--slurm-per-session", "--container", "a b.sif", "--participant-label", "01", "02",
        "--slurm-mem", "4G", "--bids-filter-file", "f.json", "-v",
    ]  # fmt: skip
    assert slurm.strip_slurm_options(argv) == [
        "ds", "out", "participant", "--participant-label", "01", "02",
        "--bids-filter-file", "f.json", "-v",
    ]  # fmt: skip


def test_slurm_option_table_matches_the_parser():
    group = next(g for g in bids_app_parser()._action_groups if g.title == "SLURM")
    parsed = {
        a.option_strings[0]: 0 if a.nargs == 0 else 1
        for a in group._group_actions
        if a.option_strings[0] != slurm.TASK_OPTION
    }
    assert parsed == slurm.SLURM_OPTIONS


@pytest.mark.parametrize(
    ("options", "level", "message"),
    [
        (["--slurm-time", "soon"], "participant", "'soon': expected a time"),
        (["--slurm-mem", "lots"], "participant", "'lots': expected a size"),
        (["--slurm-partition", "a;b"], "participant", "'a;b': letters, digits"),
        (["--container", "missing.sif"], "participant", "missing.sif: --container image not"),
        (["--frozen-selection", "s.json"], "participant", "--frozen-selection is set by the"),
        ([], "group", "use it with the participant level"),
    ],
)
def test_bad_slurm_options_are_usage_errors(gen, tmp_path, options, level, message):
    rc, _, err = gen(*options, level=level)
    assert rc == 64 and message in err
    assert not (tmp_path / "jobs").exists()


def test_slurm_options_need_the_script(dataset, weights, capsys):
    argv = [str(dataset), str(dataset.parent / "out"), "participant", "--weights", str(weights)]
    assert main([*argv, "--slurm-throttle", "4"]) == 64
    assert "--slurm-throttle only goes with --slurm-script FILE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The frozen selection


def test_frozen_selection_round_trip_and_a_moved_dataset(dataset, tmp_path):
    loc = {"datatype": "anat", "suffix": "T1w"}
    selection = disc.discover(dataset, queries=disc.default_queries(), localizer_query=loc)
    assert any(job.localizer for job in selection.jobs)
    path = tmp_path / "sel.json"
    disc.save_selection(selection, dataset, path)
    loaded = disc.load_selection(path, dataset)
    assert loaded.jobs == selection.jobs and loaded.queries == selection.queries
    assert loaded.localizer_query == selection.localizer_query

    moved = shutil.copytree(dataset, tmp_path / "elsewhere")  # e.g. mounted at another path
    jobs = disc.load_selection(path, moved).jobs
    assert [j.path for j in jobs] == [moved / j.relpath for j in selection.jobs]
    assert all(j.localizer is None or j.localizer.is_relative_to(moved) for j in jobs)
    assert sum(j.localizer is not None for j in jobs) == 2  # T2w guided by a T1w beside it


@pytest.fixture
def task(dataset, weights, tmp_path, capsys):
    """Run a task command line on a frozen selection; returns (rc, stderr)."""
    path = tmp_path / "sel.json"
    disc.save_selection(disc.discover(dataset, queries=disc.default_queries()), dataset, path)

    def _task(label: str = "02") -> tuple[int, str]:
        argv = [dataset, tmp_path / "out", "participant", "--skip-bids-validation"]
        argv += ["--weights", weights, "--frozen-selection", path, "--participant-label", label]
        rc = main([str(a) for a in argv], engine_factory=FakeEngineFactory())
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return rc, err

    _task.path = path
    return _task


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a SpineSeg selection file"),
        ("images-escape", "malformed selection (ValueError: image '../x.nii.gz' is not a path"),
        ("no-images", "malformed selection (KeyError: 'images')"),
    ],
)
def test_a_bad_selection_file_is_a_one_line_usage_error(task, content, message):
    data = json.loads(task.path.read_text())
    if content == "images-escape":
        data["images"][0]["relpath"] = "../x.nii.gz"
        content = json.dumps(data)
    elif content == "no-images":
        del data["images"]
        content = json.dumps(data)
    task.path.write_text(content)
    rc, err = task()
    assert rc == 64
    assert f"spineseg: error: {task.path}: " in err and message in err


def test_a_participant_not_in_the_selection_exits_66(task):
    rc, err = task("03")
    assert rc == 66 and "no image of sub-03 in this selection (it has sub-01, sub-02)" in err


def test_an_image_gone_from_the_dataset_exits_66(task, dataset):
    (dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz").unlink()
    rc, err = task("02")
    assert rc == 66
    assert "sub-02/anat/sub-02_T1w.nii.gz is no longer in the dataset; write the SLURM" in err
