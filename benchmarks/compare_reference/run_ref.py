"""The reference tool (its own venv, HOME and TMPDIR), as shipped or with a preloaded forkserver."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import REF_OUTPUTS, Setup
from .measure import RunRecord, judge, run_measured

DEFAULT_PRELOAD = ("torch", "nnunetv2.inference.predict_from_raw_data", "totalspineseg.inference")


def reference_data_dir(weights: Path, dest: Path) -> Path:
    """Lay a weights folder out as the reference expects: <dest>/nnUNet/results/Dataset10x_*.

    `weights` may hold the Dataset folders directly or one release folder deeper; the links
    keep the reference from copying gigabytes (it finds custom weights there, docs/method.md §1.4).
    """
    results = dest / "nnUNet" / "results"
    results.mkdir(parents=True, exist_ok=True)
    for prefix, name in (
        ("Dataset101_", "Dataset101_TotalSpineSeg_step1"),
        ("Dataset102_", "Dataset102_TotalSpineSeg_step2"),
    ):
        found = sorted(weights.glob(f"{prefix}*")) or sorted(weights.glob(f"*/{prefix}*"))
        found = [p for p in found if p.is_dir()]
        if not found:
            raise SystemExit(f"error: {weights}: no {prefix}* folder (weights folder expected)")
        link = results / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[-1].resolve(), target_is_directory=True)
    return dest


def _ref_env(setup: Setup, run_dir: Path) -> dict[str, str]:
    """Own HOME and TMPDIR. TMPDIR is a short folder under /tmp: the forkserver puts its
    socket there, and a socket path over 107 bytes fails (`AF_UNIX path too long`)."""
    home = run_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cmpref-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTALSPINESEG", "nnUNet"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), MPLCONFIGDIR=str(home / "mpl"))
    return env


PRELOAD_WRAPPER = '''\
"""Run the reference CLI with torch and nnU-Net preloaded into its forkserver (harness)."""
import multiprocessing
import sys


def _main():
    multiprocessing.set_forkserver_preload({modules!r})
    from totalspineseg.inference import main
    sys.argv[0] = "totalspineseg"
    main()


if __name__ == "__main__":
    _main()
'''


def reference_command(
    setup: Setup, tool: str, src: Path, out: Path, run_dir: Path, loc: Path | None = None
) -> list[str]:
    """`loc`: one localizer file (used for every image) or a folder whose files are named
    like the images (the reference matches `X.nii.gz` to image `X_0000.nii.gz`)."""
    args = [
        str(src),
        str(out),
        "--data-dir",
        str(setup.data_dir),
        "--no-stalling",
        "--device",
        "cuda" if setup.device.startswith("cuda") else "cpu",
    ]
    if loc is not None:
        args += ["--loc", str(loc)]
    if setup.step1_only:
        args.append("--step1")
    if tool == "ref":
        return [str(setup.refenv / "bin" / "totalspineseg"), *args]
    wrapper = run_dir / "tss_preloaded.py"
    wrapper.write_text(PRELOAD_WRAPPER.format(modules=list(setup.preload)))
    return [str(setup.refenv / "bin" / "python"), str(wrapper), *args]


def run_reference(
    setup: Setup, tool: str, src: Path, names: list[str], run_dir: Path, loc: Path | None = None
) -> RunRecord:
    """Reference on a file or folder; success = every expected output file (see `judge`)."""
    out = run_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = reference_command(setup, tool, src, out, run_dir, loc)
    env = _ref_env(setup, run_dir)
    rec = run_measured(cmd, env, run_dir / "log.txt", setup.timeout, tool)
    shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    judge(
        rec,
        names,
        setup.step1_only,
        lambda n, k: out / REF_OUTPUTS[k] / f"{n}.nii.gz",
        exit_code_matters=False,
    )
    return rec
