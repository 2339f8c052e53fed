"""Temp files left by a writer killed with -9 are removed by the next run, and only those.

A writer holds a lock on its hidden temp file while it writes; the kernel drops the lock
when the writer dies. The next run removes the temp files of SpineSeg's naming whose lock is
free: never the one a concurrent run is writing, never a file of another name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.cli.main import main
from bids_app.plumbing.atomic import remove_stale_temps

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
from pathlib import Path
from bids_app.plumbing.atomic import atomic_path
with atomic_path(Path(sys.argv[1]), suffix=".nii.gz") as tmp:
    print(tmp, flush=True)
    time.sleep(120)
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of an atomic write of `target`; returns it and its temp file."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file() and tmp.stat().st_size == 0 and tmp.name.startswith(f".{target.name}.")
    return proc, tmp


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.fixture
def run(dataset, weights, factory, tmp_path):
    def _run(*options: str) -> int:
        argv = [str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
        return main([*argv, "--weights", str(weights), "-q", *options], engine_factory=factory)

    return _run


def test_a_killed_writers_temp_file_is_removed_by_the_next_run(run, tmp_path):
    assert run() == 0
    anat = tmp_path / "out" / "sub-02" / "anat"
    target = next(anat.glob("*_dseg.nii.gz"))
    proc, tmp = start_writer(target)
    kill(proc)  # kill -9 while writing: the 0-byte hidden temp file stays
    assert tmp.is_file()
    others = {
        anat / ".notes.tmp.nii.gz": b"user file, not our naming",
        anat / ".sub-02_T1w.nii.gz.tmp": b"no random part: not ours",
        tmp_path / "out" / "sub-02" / "keep.abcdefgh.tmp.nii.gz": b"not hidden",
    }
    for path, text in others.items():
        path.write_bytes(text)
    link = anat / f".{target.name}.zzzzzzzz.tmp.nii.gz"
    link.symlink_to(target)

    assert run("--dry-run") == 0
    assert tmp.is_file()  # a dry run writes (and removes) nothing
    assert run() == 0
    assert not tmp.exists()
    assert all(path.read_bytes() == text for path, text in others.items())
    assert link.is_symlink() and target.is_file()


def test_a_task_of_one_participant_tidies_that_participant(run, tmp_path):
    assert run() == 0
    out = tmp_path / "out"
    one = next((out / "sub-01").rglob("*_dseg.nii.gz"))
    two = next((out / "sub-02").rglob("*_dseg.nii.gz"))
    stamp = next((out / "logs" / "status").glob("sub-02_*.json"))
    temps = []
    for target in (one, two, stamp):
        proc, tmp = start_writer(target)
        kill(proc)
        temps.append(tmp)
    assert run("--participant-label", "02") == 0
    assert [t.exists() for t in temps] == [True, False, False]
    assert run() == 0
    assert not any(t.exists() for t in temps)


def test_a_running_writers_temp_file_is_left_alone(run, tmp_path):
    assert run() == 0
    target = next((tmp_path / "out" / "sub-01").rglob("*_dseg.nii.gz"))
    proc, tmp = start_writer(target)
    try:
        assert run() == 0  # a second run beside a live writer
        assert remove_stale_temps(tmp_path / "out", recursive=True) == 0
        assert tmp.is_file()
    finally:
        kill(proc)
    assert remove_stale_temps(tmp_path / "out", recursive=True) == 1
    assert not tmp.exists()
