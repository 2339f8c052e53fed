"""SpineSeg: the `spineseg segment` CLI per image, or one engine process for a batch."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nibabel as nib

from .cases import Case
from .config import DEMO_WEIGHTS, OUR_OUTPUTS, REPO, Setup
from .measure import RunRecord, judge, run_measured


def _our_env(run_dir: Path, threads: int) -> dict[str, str]:
    tmp = run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _our_weights_arg(weights: Path) -> str:
    return "demo" if weights.resolve() == DEMO_WEIGHTS.resolve() else str(weights)


def _collect_ours(rec: RunRecord, out: Path, names: list[str], step1_only: bool) -> None:
    judge(
        rec,
        names,
        step1_only,
        lambda n, k: out / f"{n}_{OUR_OUTPUTS[k]}.nii.gz",
        exit_code_matters=True,
    )


def run_spineseg(setup: Setup, case: Case, run_dir: Path) -> RunRecord:
    out = run_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        *setup.spineseg_cmd,
        "segment",
        str(case.image),
        str(out),
        "--weights",
        _our_weights_arg(setup.weights),
        "--device",
        setup.device,
        "--omp-nthreads",
        str(setup.threads),
    ]
    if setup.step1_only:
        cmd.append("--step1")
    if case.loc is not None:
        cmd += ["--loc", str(case.loc)]
    env = _our_env(run_dir, setup.threads)
    rec = run_measured(cmd, env, run_dir / "log.txt", setup.timeout, "spineseg")
    _collect_ours(rec, out, [case.name], setup.step1_only)
    return rec


def run_spineseg_batch(
    setup: Setup, in_dir: Path, names: list[str], run_dir: Path, loc_dir: Path | None = None
) -> RunRecord:
    """All images through one engine in one process (models loaded once); `loc_dir` holds
    each image's localizer under the image's own file name."""
    out = run_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        __package__,
        "--engine-batch",
        str(in_dir),
        str(out),
        "--weights",
        str(setup.weights),
        "--device",
        setup.device,
        "--threads",
        str(setup.threads),
    ]
    if setup.step1_only:
        cmd.append("--step1")
    if loc_dir is not None:
        cmd += ["--engine-loc", str(loc_dir)]
    env = _our_env(run_dir, setup.threads)
    rec = run_measured(cmd, env, run_dir / "log.txt", setup.timeout, "spineseg")
    _collect_ours(rec, out, names, setup.step1_only)
    return rec


def engine_batch(
    in_dir: Path,
    out: Path,
    weights: Path,
    device: str,
    threads: int,
    step1_only: bool,
    loc_dir: Path | None = None,
) -> int:
    """Child-process entry of the batch mode: every image of a folder through one engine
    (models loaded once per device) and the participant level's pipeline (two images in
    flight per network worker), outputs named like `spineseg segment` names them."""
    from bids_app.engine.options import SegmentOptions
    from bids_app.engine.result import EngineError
    from bids_app.nnunet.weights import resolve_weights
    from bids_app.run.resources import plan_budget
    from bids_app.run.scheduling import ImageScheduler
    from bids_app.run.segmentation import default_engine_factory

    devices = (device,)
    budget = plan_budget(devices, threads, threads)
    engine = default_engine_factory(
        resolve_weights(_our_weights_arg(weights)), devices, budget.network_threads
    )
    options = SegmentOptions(step1_only=step1_only)
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> list[str]:
        name = path.name.removesuffix(".nii.gz")
        loc_path = loc_dir / path.name if loc_dir is not None else None
        loc = nib.load(loc_path) if loc_path is not None and loc_path.exists() else None
        try:
            res = engine.segment(nib.load(path), options, loc=loc, name=path.name)
        except EngineError as err:
            return [f"Error: {path.name}, {err}"]
        for kind, img in res.native.items():
            nib.save(img, out / f"{name}_{OUR_OUTPUTS[kind]}.nii.gz")
        return [f"Error: {path.name}, {msg}" for msg in res.errors] + [
            f"{path.name}: {res.timings}"
        ]

    scheduler = ImageScheduler(budget.in_flight)
    failures = 0
    try:
        for _, fut in scheduler.map_unordered(one, sorted(in_dir.glob("*.nii.gz"))):
            lines = fut.result()
            failures += any(line.startswith("Error:") for line in lines[:1])
            print(*lines, sep="\n", flush=True)
    finally:
        scheduler.close()
        engine.close()
    return 1 if failures else 0
