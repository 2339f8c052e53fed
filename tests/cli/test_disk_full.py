"""A full disk ends a run the same way every time: exit 74, one line naming the file.

In-process, the disk is made full where the code writes (a write raising ENOSPC, the run log
on /dev/full). Where this user may mount a small tmpfs (root on Linux), the real command runs
on a really full file system as well, the participant level with the demo models several
times: a network thread still running at exit used to abort the process (134).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from bids_app.cli.main import main
from bids_app.plumbing.logs import console_logging, run_log, say

DEV_FULL = Path("/dev/full")
REPO = Path(__file__).resolve().parents[2]
RUNS, LEAVE = 3, 400_000  # room for the shared files and part of the first image's outputs


def participant(dataset: Path, out: Path, weights: Path, factory) -> None:
    argv = [str(dataset), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, "--weights", str(weights), "-q"], engine_factory=factory) == 0


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Logging error" not in err
    return lines[0]


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
def test_a_run_log_that_cannot_be_written_prints_no_traceback(capsys, caplog):
    with console_logging(0), run_log(DEV_FULL):
        say("first line", "second line")
        logging.getLogger("bids_app.test").warning("a warning")
    out, err = capsys.readouterr()
    assert "first line" in out and "second line" in out  # the console still has them
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("the run log could not be written (No space left on device)") == 1


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
def test_group_level_on_a_full_disk_exits_74_in_one_line(
    dataset, weights, factory, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    participant(dataset, out, weights, factory)
    capsys.readouterr()
    crash_dirs = tmp_path / "tmp"
    crash_dirs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(crash_dirs))
    from bids_app.run import group

    monkeypatch.setattr(group, "run_log_path", lambda out: DEV_FULL)  # the log fills up too
    real_write = Path.write_bytes

    def full(self: Path, data) -> int:
        if out in self.parents:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main([str(dataset), str(out), "group"]) == 74
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"spineseg: error: {out}/") and line.endswith(
        ": cannot write (No space left on device)"
    )
    assert not list(crash_dirs.iterdir()) and not list(out.glob("logs/crash-*"))


# ---------------------------------------------------------------------------------------------
# A really full file system


@pytest.fixture
def small_disk(tmp_path):
    """A 30 MB tmpfs, or a skip where this user may not mount one."""
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Leave about `leave` free bytes on `disk` (none: not one)."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            while not leave:
                fh.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def spineseg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bids_app.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def test_group_level_on_a_really_full_disk(dataset, weights, factory, small_disk):
    out = small_disk / "out"
    participant(dataset, out, weights, factory)
    fill(small_disk)
    done = spineseg(str(dataset), str(out), "group")
    assert done.returncode == 74, done.stderr
    assert one_error_line(done.stderr).endswith("cannot write (No space left on device)")
    assert not list(out.glob("logs/crash-*"))


@pytest.mark.slow
def test_participant_level_on_a_full_disk_always_exits_74(tmp_path, small_disk):
    """Two images in flight on the demo models, the disk full once the first one is written."""
    from bids_app.phantom.bids_dataset import write_phantom_dataset

    bids = tmp_path / "bids"
    write_phantom_dataset(bids, n_subjects=1)
    out = small_disk / "out"
    codes = []
    for _ in range(RUNS):
        shutil.rmtree(out, ignore_errors=True)
        for filler in small_disk.glob("filler*"):
            filler.unlink()
        out.mkdir()
        (out / "dataset_description.json").write_text(json.dumps({"Name": "x"}))
        fill(small_disk, leave=LEAVE)
        done = spineseg(
            str(bids), str(out), "participant", "--weights", "demo", "--device", "cpu",
            "--skip-bids-validation", "--nprocs", "2", "-q",
        )  # fmt: skip
        codes.append(done.returncode)
        assert "terminate called" not in done.stderr and "Traceback" not in done.stderr
    assert codes == [74] * RUNS, codes
