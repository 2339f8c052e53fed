"""End to end: the real CLI (run.py / spineseg) on a phantom BIDS dataset with the demo models.

Needs the real engine and the demo models shipped in bids_app/demo_models/; it fails (not
skips) without them, since a release without working demo models is broken. Runs the
participant level (with BIDS validation, a filter file and a localizer), resumes, runs the
group level and validates the derivatives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.bids.derivatives import image_output_paths
from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.bids.validation import find_validator, validate
from bids_app.nnunet.weights import DEMO_DIR
from bids_app.plumbing.labels import DISCS, FINAL_IDS, VERTEBRAE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# sub-02's T2w (0.8 x 0.8 x 3 mm) is left out to keep the CPU time down: the filter
# keeps T2w images that have a session, so the run covers sub-01 (two sessions, T2w + T1w)
# and sub-02 (T1w, no session).
FILTER = {"t2w": {"session": "*"}}
EXPECTED = {
    "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz",
    "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T1w.nii.gz",
    "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz",
    "sub-02/anat/sub-02_acq-sag_T1w.nii.gz",
}


def spineseg(*args, entry: str = "spineseg") -> subprocess.CompletedProcess:
    """The installed console script, or run.py, as a user would call them."""
    cmd = (
        [str(Path(sys.executable).parent / "spineseg")]
        if entry == "spineseg"
        else [sys.executable, str(REPO / "run.py")]
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=3600, check=False
    )


@pytest.fixture(scope="module")
def phantom_ds(tmp_path_factory) -> Path:
    assert any(DEMO_DIR.glob("Dataset101_*")), (
        f"demo models not shipped yet in {DEMO_DIR}: this test needs them and the real engine"
    )
    root = tmp_path_factory.mktemp("e2e") / "bids"
    proc = spineseg("phantoms", root, "--subjects", 2)
    assert proc.returncode == 0, proc.stderr
    return root


def test_participant_resume_group_and_validator(phantom_ds, tmp_path):
    out = phantom_ds / "derivatives" / "spineseg"
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps(FILTER))
    args = [
        phantom_ds,
        out,
        "participant",
        "--weights",
        "demo",
        "--device",
        "cpu",
        "--bids-filter-file",
        filt,
        "--localizer-suffix",
        "T1w",
        "--nprocs",
        "2",
    ]

    t0 = time.monotonic()
    first = spineseg(*args, entry="run.py")
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        "Selection: 2 subject(s) (1 without sessions), 2 subject-session pair(s) "
        "(sessions: 01, 02), 4 image(s)"
    ) in first.stdout

    for rel in EXPECTED:
        source = nib.load(phantom_ds / rel)
        stamp = read_stamp(stamp_path(out, Path(rel).name))
        assert stamp["status"] == "ok", stamp
        suffix = rel.rsplit("_", 1)[1].split(".")[0]
        final_rel = image_output_paths(rel, suffix, iso=False)[("final", False)]
        assert final_rel in stamp["outputs"]
        final = nib.load(out / final_rel)
        assert final.shape == source.shape[:3]
        assert np.allclose(final.affine, source.affine, atol=1e-4)
        labels = set(np.unique(np.asarray(final.dataobj)).astype(int)) - {0}
        assert labels <= FINAL_IDS
        assert labels & set(VERTEBRAE) and labels & set(DISCS), (rel, sorted(labels))
        # The levels come from landmark discs the models found (or from the localizer's
        # labels), never from an assumption, and they are the right ones (a cervical image
        # labelled lumbar is wrong): most vertebrae found overlap the same vertebra of the
        # phantom's ground truth.
        named = stamp["landmarks"]["step1"]
        assert named and not any(n.startswith("assumed") for n in named), (rel, named)
        prefix = Path(rel).name.rsplit("_", 1)[0]
        truth_path = phantom_ds / "derivatives" / "truth" / Path(rel).parent
        truth = np.asarray(
            nib.load(truth_path / f"{prefix}_seg-truth_desc-{suffix}_dseg.nii.gz").dataobj
        )
        pred = np.asarray(final.dataobj)
        found = sorted(labels & set(VERTEBRAE))
        dice = [
            2 * ((pred == v) & (truth == v)).sum() / ((pred == v).sum() + (truth == v).sum())
            for v in found
        ]
        assert sum(d > 0.5 for d in dice) >= 0.8 * len(found), (rel, found, dice)
    guided = read_stamp(stamp_path(out, "sub-01_ses-01_acq-sag_T2w.nii.gz"))
    assert guided["options"]["localizer"].endswith(
        "sub-01_ses-01_acq-sag_seg-spine_desc-T1w_dseg.nii.gz"
    )
    assert (out / "sub-01.html").is_file() and (out / "sub-02.html").is_file()

    t0 = time.monotonic()
    again = spineseg(*args)
    again_s = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    status_lines = again.stdout.split("Status:\n")[1].strip().splitlines()[1:]
    assert len(status_lines) == 4 and all(" skipped " in line for line in status_lines)
    assert again_s < min(60.0, first_s / 2), (again_s, first_s)

    group = spineseg(phantom_ds, out, "group")
    assert group.returncode == 0, group.stderr
    assert (out / "group.html").is_file()
    assert list(out.glob("group_*.tsv"))

    assert find_validator() is not None, "bids-validator-deno (test extra) is not installed"
    report = validate(out)
    assert report.errors == [], report.error_lines()
    print(f"first run {first_s:.0f} s, resume {again_s:.1f} s")


TIME_KEYS = ("generated", "finished", "timings")


def _compared(root: Path) -> dict[str, object]:
    """Every NIfTI, TSV and JSON a run wrote, by relative path (JSON without its times).

    Logs (stamps, run logs) are compared separately; only times may differ anywhere.
    """
    found: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] == "logs":
            continue
        if p.name.endswith(".json"):
            found[rel.as_posix()] = _timeless(json.loads(p.read_text()))
        elif p.name.endswith((".nii.gz", ".tsv")):
            found[rel.as_posix()] = p.read_bytes()
    return found


def _timeless(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in TIME_KEYS}


def test_outputs_do_not_depend_on_the_schedule(phantom_ds, tmp_path):
    """One image at a time, or several in flight over two CPU network workers: same bytes."""
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps(FILTER))
    common = [
        "participant",
        "--participant-label",
        "01",
        "--weights",
        "demo",
        "--bids-filter-file",
        filt,
        "--localizer-suffix",
        "T1w",
        "--skip-bids-validation",
    ]
    # One network thread in both runs: torch sums in another order with more threads.
    common += ["--omp-nthreads", "1"]
    one = spineseg(phantom_ds, tmp_path / "one", *common, "--device", "cpu", "--pipeline", "off")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "up to 1 image(s) in flight" in one.stderr
    two = spineseg(phantom_ds, tmp_path / "two", *common, "--device", "cpu,cpu")
    assert two.returncode == 0, two.stdout + two.stderr
    assert "2 network worker(s) on cpu, cpu x 1 thread(s); up to 4 image(s)" in two.stderr
    first, second = _compared(tmp_path / "one"), _compared(tmp_path / "two")
    assert len(first) > 20 and sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    # The stamps say the same thing about each image, timings and times aside.
    stamps = sorted((tmp_path / "one" / "logs" / "status").glob("*.json"))
    assert len(stamps) == 3
    for one_stamp in stamps:
        two_stamp = tmp_path / "two" / "logs" / "status" / one_stamp.name
        assert _timeless(json.loads(one_stamp.read_text())) == _timeless(
            json.loads(two_stamp.read_text())
        )
