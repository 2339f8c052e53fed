"""The CPU stages in spawned worker processes (`--cpu-workers`, issue 30 item 5): the same
files as in the images' threads, a failure in a worker costs its image alone with the same
one-line reason, a disk error there still stops the run with exit 74, and no worker process
outlives the run."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from bidsapp_testkit import FakeEngineFactory, make_bids
from PIL import Image

from bids_app.cli.main import main
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.run import participant, resources
from bids_app.run.resources import Cgroups, plan_budget
from bids_app.run.stages.image_qc import QCStage
from bids_app.run.stages.vertebrae import VertebraStage

TWO = ["sub-01/anat/sub-01_T2w.nii.gz", "sub-02/anat/sub-02_T2w.nii.gz"]
BROKEN = "sub-02_T2w.nii.gz"


class BrokenQC(QCStage):
    """QC that breaks on one image, in whatever process runs it (pickled by reference)."""

    def run(self, image, written):
        if image.job.name == BROKEN:
            raise RuntimeError("boom")
        return super().run(image, written)


class FullDisk(VertebraStage):
    def run(self, image, written):
        raise UserError(ExitCode.IO_ERROR, f"{image.job.name}: cannot write outputs (disk full)")


class Terminating(VertebraStage):
    """SLURM's time limit while a stage runs in a worker: SIGTERM to the run."""

    def run(self, image, written):
        if image.job.name == "sub-01_T2w.nii.gz":
            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(0.5)
        return super().run(image, written)


class Dying(VertebraStage):
    """The system kills the worker while it runs the first image's stage."""

    def run(self, image, written):
        if image.job.name == "sub-01_T2w.nii.gz":
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(image, written)


def children() -> list[str]:
    """Command lines of the processes whose parent is this one (leftover workers would be
    here), without multiprocessing's resource tracker, which lives as long as this process."""
    mine = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and "resource_tracker" not in cmdline:
            mine.append(cmdline)
    return mine


def run(bids_dir: Path, out: Path, weights, *extra: str) -> tuple[int, str, str]:
    argv = [str(bids_dir), str(out), "participant", "--skip-bids-validation"]
    argv += ["--weights", str(weights), *extra]
    return main(argv, engine_factory=FakeEngineFactory()), "", ""


# What differs between two runs of the same images whatever runs them: clock times, and
# the run's timings the subject report shows.
WHEN = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00|<th>Timings</th><td>[^<]*")


def outputs(out: Path) -> dict[str, object]:
    """Every output a user reads: bytes of the NIfTI/TSV/JSON/HTML files (clock times and
    timings blanked), pixels of the PNGs; the run's logs and stamps are left out."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel.startswith("logs/"):
            continue
        if path.suffix == ".png":
            with Image.open(path) as im:
                found[rel] = (im.mode, im.size, np.asarray(im).tobytes())
        else:
            found[rel] = WHEN.sub(b"", path.read_bytes())
    return found


@pytest.mark.with_qc
def test_worker_processes_write_the_same_files_as_threads(weights, tmp_path, capsys):
    ds = make_bids(tmp_path / "ds", TWO)
    before = children()
    assert run(ds, tmp_path / "threads", weights, "--cpu-workers", "0")[0] == 0
    assert run(ds, tmp_path / "workers", weights, "--cpu-workers", "2")[0] == 0
    log = (tmp_path / "workers" / "logs").glob("spineseg-*.log")
    text = "\n".join(p.read_text() for p in log)
    assert "vertebral bodies and QC in 2 worker process(es)" in text
    threads, workers = outputs(tmp_path / "threads"), outputs(tmp_path / "workers")
    assert any(k.endswith("_qc.json") for k in threads)  # QC ran: there is something to compare
    assert any(k.endswith(".png") for k in threads)
    assert threads.keys() == workers.keys()
    assert [k for k in threads if threads[k] != workers[k]] == []
    assert children() == before and multiprocessing.active_children() == []


@pytest.mark.with_qc
def test_a_failure_in_a_worker_fails_that_image_alone(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(participant, "QCStage", BrokenQC)
    ds = make_bids(tmp_path / "ds", TWO)
    before = children()
    rc = run(ds, tmp_path / "out", weights, "--cpu-workers", "2")[0]
    stdout = capsys.readouterr().out
    assert rc == 1
    table = stdout.split("Status:\n")[1].splitlines()[1:]
    rows = {line.split()[2]: line.split(None, 5)[3:] for line in table if line.strip()}
    assert rows["sub-01_T2w.nii.gz"][0] == "ok"
    status, _, reason = rows[BROKEN]
    assert status == "failed"
    assert reason.startswith("unexpected RuntimeError: boom (stage: QC) (see logs/crash-")
    crash = (tmp_path / "out" / reason.split("(see ")[1].rstrip(")")).read_text()
    assert "in run" in crash and "RuntimeError: boom" in crash  # the worker's own traceback
    assert children() == before and multiprocessing.active_children() == []


def test_a_killed_worker_fails_its_image_and_the_next_image_gets_a_new_one(
    weights, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(participant, "VertebraStage", Dying)
    ds = make_bids(tmp_path / "ds", TWO)
    before = children()
    argv = ["--cpu-workers", "1", "--max-in-flight", "1"]
    rc = run(ds, tmp_path / "out", weights, *argv)[0]
    out = capsys.readouterr().out
    assert rc == 1
    table = out.split("Status:\n")[1].splitlines()[1:]
    rows = {line.split()[2]: line.split(None, 5)[3:] for line in table if line.strip()}
    status, _, reason = rows["sub-01_T2w.nii.gz"]
    assert status == "failed"
    assert reason.startswith(
        "unexpected WorkerDied: a stage worker process died (killed by the system, e.g. out "
        "of memory) (stage: vertebral bodies) (see logs/crash-"
    )
    assert rows["sub-02_T2w.nii.gz"][0] == "ok"  # its stages ran in a fresh worker
    assert children() == before and multiprocessing.active_children() == []


@pytest.mark.parametrize(
    ("stage", "rc", "message"),
    [
        (FullDisk, 74, "cannot write outputs (disk full)"),  # a disk error: exit 74
        (Terminating, 128 + signal.SIGTERM, "stopped by SIGTERM"),
    ],
    ids=["disk-error-exit-74", "sigterm-ends-the-workers"],
)
def test_a_worker_that_stops_the_run_leaves_no_process(
    weights, tmp_path, capsys, monkeypatch, stage, rc, message
):
    """A disk error in a worker, or SIGTERM while a worker runs a stage, stops the run with
    its exit code and one line, and no worker process outlives it."""
    monkeypatch.setattr(participant, "VertebraStage", stage)
    ds = make_bids(tmp_path / "ds", TWO)
    before = children()
    got = run(ds, tmp_path / "out", weights, "--cpu-workers", "1")[0]
    err = capsys.readouterr().err
    assert got == rc
    assert message in err and "Traceback" not in err
    assert children() == before and multiprocessing.active_children() == []


def test_stage_workers_by_default_on_gpus_only(tmp_path, monkeypatch):
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda _pid: set(range(16)))
    none = Cgroups(root=tmp_path, proc=tmp_path / "cgroup")  # no limits

    def budget(devices, nprocs, **kw):
        return plan_budget(devices, nprocs, None, env={}, cgroups=none, **kw)

    assert (budget(("cuda:0",), 16, in_flight=8).cpu_workers) == 8  # one per image in flight
    assert budget(("cuda:0",), 4, in_flight=8).cpu_workers == 3  # the CPUs left
    assert budget(("cuda:0", "cuda:1"), 16).cpu_workers == 4  # 2 images per GPU
    assert budget(("cpu",), 16).cpu_workers == 0
    assert budget(("cuda:0",), 16, cpu_workers=0).cpu_workers == 0
    assert budget(("cpu",), 2, cpu_workers=3).cpu_workers == 2  # capped by the budget
    assert "every CPU stage in the images' threads" in budget(("cpu",), 2).describe(("cpu",))
