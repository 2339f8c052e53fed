"""The pipelined participant run seen from the command line (fake engine, no network)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bidsapp_testkit import DEFAULT_IMAGES, FakeEngineFactory

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.cli.main import main

TESTKIT = Path(__file__).resolve().parents[1] / "bids"


def run(capsys, dataset, out, weights, *extra, factory):
    argv = [dataset, out, "participant", "--skip-bids-validation", "--weights", weights, *extra]
    rc = main([str(a) for a in argv], engine_factory=factory)
    return rc, *capsys.readouterr()


def test_images_overlap_and_the_status_table_keeps_the_selection_order(
    capsys, dataset, weights, tmp_path
):
    factory = FakeEngineFactory(delay=0.2)
    rc, out, err = run(capsys, dataset, tmp_path / "out", weights, "--nprocs", "2", factory=factory)
    assert rc == 0, err
    assert "up to 2 image(s) in flight" in err
    assert len(factory.engines) == 1  # one engine (networks loaded once) for the run
    assert factory.engines[0].peak == 2  # two images were inside the engine at once
    table = out.split("Status:\n")[1].strip().splitlines()[1:]
    names = [line.split()[2] for line in table]
    expected = sorted(Path(p).name for p in DEFAULT_IMAGES)  # sorted like the selection
    assert sorted(names) == expected and len(names) == len(DEFAULT_IMAGES)
    selection = [
        line.split(": ")[-1].split("/")[-1] for line in out.splitlines() if ": sub-" in line
    ]
    assert names == [n for n in selection if n in names]
    assert err.count("] sub-") == len(DEFAULT_IMAGES)  # one line per finished image
    assert f"[{len(DEFAULT_IMAGES)}/{len(DEFAULT_IMAGES)}]" in err


def test_pipeline_off_runs_one_image_at_a_time(capsys, dataset, weights, tmp_path):
    factory = FakeEngineFactory(delay=0.05)
    rc, _, err = run(
        capsys, dataset, tmp_path / "out", weights, "--pipeline", "off", factory=factory
    )
    assert rc == 0, err
    assert "up to 1 image(s) in flight" in err
    assert factory.engines[0].peak == 1


SLOW_RUN = """
import sys
sys.path.insert(0, {testkit!r})
from bidsapp_testkit import FakeEngineFactory
from bids_app.cli.main import main
sys.exit(main(sys.argv[1:], engine_factory=FakeEngineFactory(delay=1.5)))
"""


def test_sigterm_stops_cleanly_and_a_rerun_finishes(dataset, weights, tmp_path):
    out = tmp_path / "out"
    argv = [str(dataset), str(out), "participant", "--skip-bids-validation"]
    argv += ["--weights", str(weights), "--nprocs", "2", "-q"]
    script = SLOW_RUN.format(testkit=str(TESTKIT))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    stamps = out / "logs" / "status"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(stamps.glob("*.json")):
        time.sleep(0.1)
    assert list(stamps.glob("*.json")), "no image finished"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    done = {p.name for p in stamps.glob("*.json")}
    assert 0 < len(done) < len(DEFAULT_IMAGES)
    for path in stamps.glob("*.json"):
        assert read_stamp(path)["status"] == "ok"  # nothing was recorded for stopped images
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    factory = FakeEngineFactory()
    rc = main(argv, engine_factory=factory)
    assert rc == 0
    assert len(factory.calls) == len(DEFAULT_IMAGES) - len(done)  # only what was left
    for rel in DEFAULT_IMAGES:
        assert read_stamp(stamp_path(out, Path(rel).name))["status"] == "ok"


def test_an_image_another_run_is_segmenting_is_skipped(capsys, dataset, weights, tmp_path):
    from filelock import FileLock

    out = tmp_path / "out"
    busy = Path(DEFAULT_IMAGES[0]).name
    lock_file = out / "logs" / "locks" / f".{busy}.lock"
    lock_file.parent.mkdir(parents=True)
    factory = FakeEngineFactory()
    with FileLock(str(lock_file)):  # held by "another run" (another process in real life)
        rc, stdout, _ = run(capsys, dataset, out, weights, factory=factory)
    assert rc == 75  # not all done: `participant && group` must not go on yet
    line = next(ln for ln in stdout.splitlines() if busy in ln and "skipped" in ln)
    assert "being segmented by another run" in line
    assert busy not in [name for name, _ in factory.calls]
    assert read_stamp(stamp_path(out, busy)) is None  # nothing written for it by this run
    assert len(factory.calls) == len(DEFAULT_IMAGES) - 1


def test_an_image_too_large_for_the_memory_budget_fails_alone(capsys, tmp_path, weights):
    import nibabel as nib
    import numpy as np
    from bidsapp_testkit import make_bids

    dataset = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T2w.nii.gz"])
    # A long 0.5 x 0.5 x 3 mm sagittal stack: small on disk, large on the 1 mm grid.
    big = tmp_path / "ds" / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    big.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((800, 800, 40), np.uint8), np.diag([0.5, 0.5, 3, 1])), big)
    factory = FakeEngineFactory()
    rc, out, err = run(
        capsys, dataset, tmp_path / "out", weights, "--mem-mb", "400", factory=factory
    )
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "sub-02_T2w.nii.gz" in ln and "failed" in ln)
    assert "GiB for its arrays on the 1 mm grid" in line and "--mem-mb" in line
    assert [name for name, _ in factory.calls] == ["sub-01_T2w.nii.gz"]  # the other one ran
    assert "memory budget 0.4 GiB (--mem-mb)" in err
    stamp = read_stamp(stamp_path(tmp_path / "out", "sub-02_T2w.nii.gz"))
    assert stamp["status"] == "failed" and stamp["transient"] is True  # retried next run
