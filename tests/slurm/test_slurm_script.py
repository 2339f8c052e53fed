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
from bids_app.cli.slurm_args import without_slurm_options
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
        "--device", "cuda",
    )  # fmt: skip
    assert rc == 0
    array, group = tmp_path / "jobs" / "run.sh", tmp_path / "jobs" / "run_group.sh"
    assert sbatch(array) == {
        "job-name": "spineseg",
        "array": "0-1%5",  # sub-01, sub-02
        "cpus-per-task": "2",
        "mem": "8G",
        "time": "1-00",
        "gres": "gpu:1",  # alone valid in every SLURM; --gpus-per-task needs --ntasks (23.11)
        "partition": "gpu",
        "account": "lab1",
        "chdir": str(tmp_path),
        "output": f"{tmp_path}/out/logs/slurm/%x_%A_%a.out",
    }
    assert (tmp_path / "out" / "logs" / "slurm").is_dir()  # sbatch does not create it
    # The group level needs no GPU: not on the GPU partition, its own small resources.
    assert sbatch(group) == {
        "job-name": "spineseg-group",
        "cpus-per-task": "1",
        "mem": slurm.DEFAULT_GROUP_MEM,
        "time": slurm.DEFAULT_GROUP_TIME,
        "account": "lab1",
        "chdir": str(tmp_path),
        "output": f"{tmp_path}/out/logs/slurm/%x_%j.out",
    }
    for script in (array, group):
        assert os.access(script, os.X_OK)
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert f"array=$(sbatch --parsable {array})" in out
    assert f'sbatch --dependency=afterany:"$array" {group}' in out


def test_group_job_resources_and_partition_are_settable(gen, tmp_path):
    group = tmp_path / "jobs" / "run_group.sh"
    assert gen("--slurm-partition", "cpu")[0] == 0
    assert sbatch(group)["partition"] == "cpu"  # no GPU asked for: the same partition
    options = ["--slurm-gpus", "1", "--device", "cuda", "--slurm-partition", "gpu"]
    group_options = ["--slurm-group-partition", "short", "--slurm-group-mem", "2G"]
    assert gen(*options, *group_options, "--slurm-group-time", "10")[0] == 0
    lines = sbatch(group)
    assert (lines["partition"], lines["mem"], lines["time"]) == ("short", "2G", "10")
    assert "gres" not in lines and sbatch(tmp_path / "jobs" / "run.sh")["partition"] == "gpu"
    task = run_task(tmp_path, tmp_path / "jobs" / "run.sh", 0)
    assert not any(a.startswith("--slurm") for a in task)


@pytest.mark.parametrize(
    ("options", "warning"),
    [
        (["--device", "cpu", "--slurm-gpus", "1"], "--device cpu with --slurm-gpus 1"),
        (["--nprocs", "64", "--slurm-mem", "1G"], "--slurm-mem 1G for 64 CPU(s)"),
        (["--device", "cuda"], "--device cuda without --slurm-gpus"),
    ],
)
def test_requests_that_book_what_tasks_cannot_use_are_written_with_a_warning(
    gen, tmp_path, options, warning
):
    rc, _, err = gen(*options)
    assert rc == 0 and (tmp_path / "jobs" / "run.sh").is_file()
    assert [line for line in err.splitlines() if warning in line]


def test_a_container_on_cuda_without_a_gpu_request_is_refused(gen, tmp_path):
    (tmp_path / "spineseg.sif").write_bytes(b"")
    rc, _, err = gen("--container", "spineseg.sif", "--device", "cuda:0")
    assert rc == 64 and not (tmp_path / "jobs").exists()
    assert err.count("\n") == 1 and "--device cuda:0 with --container needs --slurm-gpus" in err
    assert gen("--container", "spineseg.sif", "--device", "cuda:0", "--slurm-gpus", "1")[0] == 0


def test_a_gpu_index_beyond_the_tasks_gpus_is_refused(gen, tmp_path):
    rc, _, err = gen("--device", "cuda:0,cuda:1", "--slurm-gpus", "1")
    assert rc == 64 and not (tmp_path / "jobs").exists()
    assert "SLURM numbers a task's GPUs from cuda:0, so cuda:1 does not exist" in err
    assert gen("--device", "cuda:0,cuda:1", "--slurm-gpus", "2")[0] == 0


def test_more_tasks_than_max_array_size_are_split_into_valid_arrays(gen, tmp_path, monkeypatch):
    rc, out, _ = gen("--slurm-max-array", "1", "--slurm-throttle", "3")
    assert rc == 0
    jobs = tmp_path / "jobs"
    first, second, group = jobs / "run.sh", jobs / "run_part2.sh", jobs / "run_group.sh"
    assert [sbatch(a)["array"] for a in (first, second)] == ["0-0%3", "0-0%3"]
    submit = [
        f"array1=$(sbatch --parsable {first})",
        f"array2=$(sbatch --parsable {second})",
        f'sbatch --dependency=afterany:"$array1":"$array2" {group}',
    ]
    assert all(line in out for line in submit)
    assert all(f"#   {line}" in group.read_text() for line in submit)
    labels = [run_task(tmp_path, a, 0) for a in (first, second)]
    assert [args[args.index("--participant-label", 6) + 1] for args in labels] == ["01", "02"]
    assert gen()[0] == 0  # one array again: the second script of the earlier split is gone
    assert not second.exists() and sbatch(first)["array"] == "0-1"


def test_the_task_gets_the_memory_budget_explicitly(gen, tmp_path):
    """`apptainer run --cleanenv` hides SLURM_MEM_PER_NODE: the task gets --mem-mb."""
    assert gen("--slurm-mem", "3G")[0] == 0
    array = tmp_path / "jobs" / "run.sh"
    assert run_task(tmp_path, array, 0)[-2:] == ["--mem-mb", "3072"]
    assert run_task(tmp_path, array, 0, SLURM_MEM_PER_NODE="5000")[-2:] == ["--mem-mb", "5000"]
    assert gen("--mem-mb", "1000")[0] == 0  # given by hand: passed as typed, not twice
    args = run_task(tmp_path, array, 0)
    assert args.count("--mem-mb") == 1 and args[args.index("--mem-mb") + 1] == "1000"


def test_group_script_runs_the_group_level_on_the_output(gen, tmp_path):
    assert gen()[0] == 0
    args = run_task(tmp_path, tmp_path / "jobs" / "run_group.sh", 0)
    assert args == [str(tmp_path / "ds"), str(tmp_path / "out"), "group"]


def test_without_nprocs_a_task_uses_its_slurm_cpus(gen, tmp_path):
    assert gen()[0] == 0
    array = tmp_path / "jobs" / "run.sh"
    assert sbatch(array)["cpus-per-task"] == str(slurm.DEFAULT_CPUS)
    assert run_task(tmp_path, array, 0)[-4:-2] == ["--nprocs", "3"]  # $SLURM_CPUS_PER_TASK


def test_task_gets_the_typed_options_and_runs_only_its_participant(gen, tmp_path, monkeypatch):
    options = ["--participant-label", "sub-01", "02", "--slurm-mem=4G", "--iso", "-v"]
    assert gen(*options, "--nprocs", "1")[0] == 0
    selection = tmp_path / "jobs" / "run_selection.json"
    args = run_task(tmp_path, tmp_path / "jobs" / "run.sh", 1)
    typed = [*gen.argv, "--participant-label", "sub-01", "02", "--iso", "-v", "--nprocs", "1"]
    tail = ["--frozen-selection", str(selection), "--participant-label", "02", "--mem-mb", "4096"]
    assert args == [*typed, *tail]

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
    budget = ["--nprocs", "3", "--mem-mb", str(16 * 1024)]
    assert tails == [
        ["--participant-label", "01", "--session-label", "01", *budget],
        ["--participant-label", "01", "--session-label", "02", *budget],
        ["--participant-label", "02", *budget],  # no sessions: all of sub-02's images
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


def test_slurm_options_are_removed_the_way_the_parser_reads_them():
    argv = [
        "ds", "out", "participant", "--slurm-script=x.sh", "--slurm-thr", "2",
        "--slurm-per-session", "--container", "a b.sif", "--participant-label", "01", "02",
        "--slurm-mem", "4G", "--bids-filter-file", "f.json", "-v", "--slurm-group-m=2G",
        "--nprocs", "3", "--slurm-mem", "8G",
    ]  # fmt: skip
    assert without_slurm_options(argv) == [
        "ds", "out", "participant", "--participant-label", "01", "02",
        "--bids-filter-file", "f.json", "-v", "--nprocs", "3",
    ]  # fmt: skip


VALUES = {"--slurm-mem": "4G", "--slurm-group-mem": "2G", "--slurm-time": "10"}
VALUES |= {"--slurm-group-time": "10", "--slurm-script": "x.sh", "--container": "a.sif"}


@pytest.mark.parametrize("option", sorted(bids_app_parser().slurm_options.values()))
@pytest.mark.parametrize("spelling", ["full", "prefix", "equals"])
def test_every_slurm_option_in_every_spelling_leaves_the_task_line(option, spelling):
    parser = bids_app_parser()
    action = next(a for a in parser._actions if option in a.option_strings)
    value = [] if action.nargs == 0 else [VALUES.get(option, "gpu" if "part" in option else "2")]
    name = option
    if spelling == "prefix":  # the shortest prefix argparse accepts for it
        others = [o for a in parser._actions for o in a.option_strings if o != option]
        name = (
            next(
                option[:n]
                for n in range(3, len(option))
                if not any(o.startswith(option[:n]) for o in others)
            )
            if not any(o.startswith(option) for o in others)
            else option
        )
    tokens = [f"{name}={value[0]}"] if spelling == "equals" and value else [name, *value]
    typed = ["ds", "out", "participant", "--iso", *tokens, "--participant-label", "01"]
    assert without_slurm_options(typed) == [
        "ds", "out", "participant", "--iso", "--participant-label", "01"
    ]  # fmt: skip


def test_every_option_of_the_slurm_group_is_known_as_one():
    parser = bids_app_parser()
    group = next(g for g in parser._action_groups if g.title == "SLURM")
    options = {a.option_strings[0] for a in group._group_actions}
    assert options - set(parser.slurm_options.values()) == {slurm.TASK_OPTION}


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
