"""Side-by-side run of SpineSeg and the reference tool (PyPI totalspineseg==20260807).

For each case (a phantom rendered by `bids_app.phantom`, a real scan of shared/data, or any
NIfTI file) the same image and the same weights folder go through:

- `ref`: the reference CLI as users run it (with `--no-stalling`; without it, it deadlocks here);
- `ref-preload`: the same CLI through a wrapper that preloads torch and nnU-Net into its
  forkserver (`multiprocessing.set_forkserver_preload`), the strongest form of the same code;
- `spineseg`: the `spineseg segment` CLI.

Each run is timed (wall) and its whole process tree is polled from /proc (sum of RSS and of
PSS over all live descendants, peak of each, and the most processes alive at once). Outputs are
then compared voxel by voxel against the reference: final labels (`step2_output`), step-1
labels (`step1_output`), level markers (`step1_levels`) and the cord/canal soft maps.
A batch mode segments N phantoms in one call per tool (SpineSeg: its engine in one process).

The reference never runs inside this process: it lives in its own venv (see
benchmarks/reference_env.sh), gets its own HOME and TMPDIR, and is judged by its output files
and its `Error:` lines, not by its exit code (it exits 0 when an image fails).

Results: benchmarks/out/compare_reference.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SPINESEG_SHARED_DATA", "/work/shared/data"))
DEMO_WEIGHTS = REPO / "bids_app" / "demo_models"
REFERENCE = "totalspineseg==20260807"
TOOLS = ("ref", "ref-preload", "spineseg")
DEFAULT_CASES = (
    "phantom:5101:cervical",
    "phantom:5102:lumbar",
    "real:sct_testing_data/t2/t2.nii.gz",
    "real:sct_tutorial_data/single_subject/data/t2_lumbar/t2_lumbar.nii.gz",
)
DEFAULT_PRELOAD = ("torch", "nnunetv2.inference.predict_from_raw_data", "totalspineseg.inference")
ERROR_LINE = re.compile(r"^Error: (?P<path>.+?), (?P<msg>.*)$")

# Output names per tool and kind. Reference: <out>/<folder>/<name>.nii.gz (method.md §6.2);
# SpineSeg segment CLI: <out>/<name>_<suffix>.nii.gz.
REF_OUTPUTS = {
    "final": "step2_output",
    "step1": "step1_output",
    "levels": "step1_levels",
    "cord_soft": "step1_cord",
    "canal_soft": "step1_canal",
}
OUR_OUTPUTS = {
    "final": "seg-spine_dseg",
    "step1": "seg-step1_dseg",
    "levels": "seg-discmarkers_dseg",
    "cord_soft": "label-cord_probseg",
    "canal_soft": "label-canal_probseg",
}
LABEL_KINDS = ("final", "step1")


# --------------------------------------------------------------------------------------------
# Process-tree measurement
# --------------------------------------------------------------------------------------------
def _ppid_map() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        return 0, 0
    return rss, pss


@dataclass
class TreePeak:
    """Peaks over the life of a process tree (sampled every `interval` seconds)."""

    rss_mib: float = 0.0
    pss_mib: float = 0.0
    processes: int = 0
    samples: int = 0


class TreeMonitor(threading.Thread):
    """Polls /proc for a root pid and all its descendants until stopped."""

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = TreePeak()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = _descendants(self.root)
            sizes = [_rss_pss_kib(p) for p in pids]
            alive = sum(1 for s in sizes if s[0])
            rss = sum(s[0] for s in sizes) / 1024
            pss = sum(s[1] for s in sizes) / 1024
            peak = self.peak
            peak.rss_mib, peak.pss_mib = max(peak.rss_mib, rss), max(peak.pss_mib, pss)
            peak.processes = max(peak.processes, alive)
            peak.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> TreePeak:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass
class RunRecord:
    """One tool run on one case (or one batch)."""

    tool: str
    command: list[str]
    ok: bool = False
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    max_processes: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)
    log: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path, per image name


def run_measured(
    cmd: list[str], env: dict[str, str], log_path: Path, timeout: float, tool: str
) -> RunRecord:
    """Run `cmd` in its own session, measure the tree, kill the whole session on timeout."""
    rec = RunRecord(tool=tool, command=cmd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        try:
            rec.exit_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rec.timed_out = True
            _kill_session(proc)
        rec.wall_s = round(time.perf_counter() - t0, 2)
        peak = monitor.stop()
        # Worker processes left behind after the root exited belong to the same session.
        _kill_session(proc)
    rec.peak_rss_mib, rec.peak_pss_mib = round(peak.rss_mib, 1), round(peak.pss_mib, 1)
    rec.max_processes = peak.processes
    rec.log = str(log_path)
    return rec


def _kill_session(proc: subprocess.Popen) -> None:
    """End the process group this harness started (and only that one)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """An input image plus, for phantoms, its exact labels on the same grid."""

    spec: str
    name: str  # file-name-safe id, also the image file name stem
    image: Path
    truth: Path | None = None
    loc: Path | None = None  # localizer labels given to both tools (`--loc`)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def real_scans(manifest: Path = DATA / "MANIFEST.tsv") -> list[str]:
    """Every image (not label map) listed in shared/data/MANIFEST.tsv, as `real:` specs."""
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [f"real:{r['local_path']}" for r in rows if r["label_values"].startswith("image")]


def _phantom_options(parts: list[str], spec: str) -> tuple[dict, bool]:
    """Positional FOV/VOXEL/AXCODES/CONTRAST, then `lr=MM`, `oblique=X,Y,Z` (degrees) and
    `loc` (give the exact labels to both tools as a localizer) in any order."""
    positional = [p for p in parts if "=" not in p and p != "loc"]
    acq: dict = dict(zip(("fov", "voxel", "axcodes", "contrast"), positional, strict=False))
    if len(positional) > 4:
        raise SystemExit(f"error: {spec}: too many fields")
    for part in (p for p in parts if "=" in p):
        key, _, value = part.partition("=")
        try:
            if key == "lr":
                acq["lr_extent"] = float(value)
            elif key == "oblique":
                acq["oblique_deg"] = tuple(float(v) for v in value.split(","))
                if len(acq["oblique_deg"]) != 3:
                    raise ValueError("three angles expected")
            else:
                raise SystemExit(f"error: {spec}: unknown option {key!r} (lr=, oblique=, loc)")
        except ValueError as err:
            raise SystemExit(f"error: {spec}: {part}: {err}") from None
    return acq, "loc" in parts


def prepare_case(spec: str, inputs: Path, truth_dir: Path | None = None) -> Case:
    """Materialise a case spec into inputs/<name>.nii.gz.

    Specs: `phantom:SEED[:FOV[:VOXEL[:AXCODES[:CONTRAST]]]][:lr=MM][:oblique=X,Y,Z][:loc]`
    (defaults whole, iso1, RAS, T2w), `real:<path under shared/data>`, `file:<path>`.
    A phantom's exact labels go to `truth_dir` (default: beside the image) as
    `<name>_truth.nii.gz`; with `loc` the same file is the localizer of both tools.
    """
    inputs.mkdir(parents=True, exist_ok=True)
    kind, _, rest = spec.partition(":")
    if kind == "phantom":
        from bids_app.phantom.render import Acquisition, render_phantom

        parts = rest.split(":")
        seed = int(parts[0])
        acq, use_loc = _phantom_options(parts[1:], spec)
        name = _safe(f"phantom_{rest}")
        ph = render_phantom(seed, Acquisition(**acq))
        truth_dir = truth_dir or inputs
        truth_dir.mkdir(parents=True, exist_ok=True)
        image, truth = inputs / f"{name}.nii.gz", truth_dir / f"{name}_truth.nii.gz"
        nib.save(ph.image, image)
        nib.save(ph.labels, truth)
        return Case(spec, name, image, truth, truth if use_loc else None)
    if kind in ("real", "file"):
        src = DATA / rest if kind == "real" else Path(rest)
        if not src.is_file():
            raise SystemExit(f"error: {spec}: {src} does not exist")
        name = _safe(f"{kind}_{rest.removesuffix('.gz').removesuffix('.nii')}")
        image = inputs / f"{name}.nii.gz"
        # The reference renames inputs by regex on ".nii.gz"; a plain compressed copy with a
        # safe name keeps both tools on the same file and the same output name.
        if src.suffix == ".nii":
            nib.save(nib.load(src), image)
        else:
            shutil.copyfile(src, image)
        return Case(spec, name, image)
    raise SystemExit(f"error: unknown case spec {spec!r} (phantom:, real: or file:)")


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------
@dataclass
class Setup:
    refenv: Path
    weights: Path
    data_dir: Path  # reference --data-dir (nnUNet/results/Dataset10x_* links)
    device: str
    threads: int
    timeout: float
    step1_only: bool
    preload: tuple[str, ...]
    work: Path
    spineseg_cmd: list[str]


def reference_data_dir(weights: Path, dest: Path) -> Path:
    """Lay a weights folder out as the reference expects: <dest>/nnUNet/results/Dataset10x_*.

    `weights` may hold the Dataset folders directly or one release folder deeper; the links
    keep the reference from copying gigabytes (it finds custom weights there, method.md §1.4).
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


def judge(
    rec: RunRecord,
    names: list[str],
    step1_only: bool,
    path_of: Callable[[str, str], Path],
    exit_code_matters: bool,
) -> None:
    """Fill `rec.outputs`, `rec.ok` and `rec.errors` from the files written and the log.

    The reference exits 0 when an image fails, so for it only the files and its
    `Error: <file>, <reason>` lines count; SpineSeg must also exit 0.
    """
    log = Path(rec.log).read_text(errors="replace")
    # tqdm separates its updates with \r: splitlines() splits there too.
    for line in log.splitlines():
        m = ERROR_LINE.match(line.strip())
        if m:
            rec.errors.append(f"{Path(m['path']).name}: {m['msg']}")
    for name in names:
        for kind in REF_OUTPUTS:
            path = path_of(name, kind)
            if path.exists():
                rec.outputs[f"{name}/{kind}"] = str(path)
    wanted = ("step1", "levels") if step1_only else ("final", "step1", "levels")
    missing = [f"{n}/{k}" for n in names for k in wanted if f"{n}/{k}" not in rec.outputs]
    bad_exit = exit_code_matters and rec.exit_code != 0
    rec.ok = not rec.timed_out and not missing and not bad_exit
    if rec.timed_out:
        rec.errors.append(f"timed out after {rec.wall_s:.0f} s")
    if missing:
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        rec.errors.append("missing outputs: " + ", ".join(missing[:4]) + more)
    if rec.exit_code not in (0, None):
        rec.errors.append(f"exit code {rec.exit_code}: {_last_line(log)}")


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


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
        str(Path(__file__).resolve()),
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
    """Child-process entry of the batch mode: one SpineSegEngine for every image of a folder,
    outputs named like `spineseg segment` names them."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.engine.result import EngineError
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights(_our_weights_arg(weights)), device, threads)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in sorted(in_dir.glob("*.nii.gz")):
        name = path.name.removesuffix(".nii.gz")
        loc_path = loc_dir / path.name if loc_dir is not None else None
        loc = nib.load(loc_path) if loc_path is not None and loc_path.exists() else None
        try:
            res = engine.segment(nib.load(path), step1_only=step1_only, loc=loc, name=path.name)
        except EngineError as err:
            print(f"Error: {path.name}, {err}", flush=True)
            failures += 1
            continue
        for kind, img in res.native.items():
            nib.save(img, out / f"{name}_{OUR_OUTPUTS[kind]}.nii.gz")
        for msg in res.errors:
            print(f"Error: {path.name}, {msg}", flush=True)
        print(f"{path.name}: {res.timings}", flush=True)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------
def _load(path: str) -> nib.Nifti1Image:
    return nib.load(path)


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> str | None:
    if a.shape[:3] != b.shape[:3]:
        return f"shape {a.shape} vs {b.shape}"
    if not np.allclose(a.affine, b.affine, atol=1e-4):
        return "affines differ"
    return None


def compare_labels(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    """Voxel agreement, Dice per label and a summary of the voxels that differ."""
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj).round().astype(np.int32)
    b = np.asanyarray(ours.dataobj).round().astype(np.int32)
    diff = a != b
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    dice = {}
    for lab in labels:
        ma, mb = a == lab, b == lab
        denom = int(ma.sum()) + int(mb.sum())
        dice[str(lab)] = round(2 * int((ma & mb).sum()) / denom, 4) if denom else 1.0
    pairs: dict[tuple[int, int], int] = {}
    if diff.any():
        for x, y in zip(a[diff].tolist(), b[diff].tolist(), strict=True):
            pairs[(x, y)] = pairs.get((x, y), 0) + 1
    confusion = sorted(pairs.items(), key=lambda kv: -kv[1])[:10]
    idx = np.argwhere(diff)
    fg = (a > 0) | (b > 0)
    return {
        "agreement_pct": round(100 * (1 - diff.mean()), 4),
        "foreground_agreement_pct": round(100 * (1 - diff[fg].mean()), 4) if fg.any() else 100.0,
        "n_diff": int(diff.sum()),
        "dice": dice,
        "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else 1.0,
        "only_in_ref": sorted(set(np.unique(a).tolist()) - set(np.unique(b).tolist())),
        "only_in_ours": sorted(set(np.unique(b).tolist()) - set(np.unique(a).tolist())),
        "top_diffs": [{"ref": x, "ours": y, "voxels": n} for (x, y), n in confusion],
        "diff_bbox": [idx.min(0).tolist(), idx.max(0).tolist()] if len(idx) else None,
    }


def compare_levels(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    """Level markers are single voxels: compare positions per level value."""
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj).round().astype(np.int32)
    b = np.asanyarray(ours.dataobj).round().astype(np.int32)
    zooms = np.asarray(ref.header.get_zooms()[:3], float)
    per_level = {}
    for lev in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        pa, pb = np.argwhere(a == lev), np.argwhere(b == lev)
        entry: dict = {"ref": pa.tolist(), "ours": pb.tolist()}
        if len(pa) and len(pb):
            entry["distance_mm"] = round(float(np.linalg.norm((pa[0] - pb[0]) * zooms)), 3)
        per_level[str(lev)] = entry
    same = [k for k, v in per_level.items() if v["ref"] == v["ours"]]
    return {
        "agreement_pct": round(100 * (1 - (a != b).mean()), 4),
        "levels_ref": sorted(set(np.unique(a).tolist()) - {0}),
        "levels_ours": sorted(set(np.unique(b).tolist()) - {0}),
        "same_position": len(same),
        "n_levels": len(per_level),
        "per_level": per_level,
    }


def compare_soft(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj, dtype=np.float64)
    b = np.asanyarray(ours.dataobj, dtype=np.float64)
    d = np.abs(a - b)
    support = (a > 0) | (b > 0)
    return {
        "max_abs_diff": round(float(d.max()), 6),
        "mean_abs_diff_in_support": round(float(d[support].mean()), 6) if support.any() else 0.0,
        "n_diff_gt_1e-3": int((d > 1e-3).sum()),
    }


def compare_runs(ref: RunRecord, other: RunRecord, name: str) -> dict:
    """Every output kind both runs produced for image `name`."""
    out = {}
    for kind in REF_OUTPUTS:
        pa, pb = ref.outputs.get(f"{name}/{kind}"), other.outputs.get(f"{name}/{kind}")
        if not (pa and pb):
            out[kind] = {"missing": [r.tool for r, p in ((ref, pa), (other, pb)) if not p]}
            continue
        fn = COMPARERS.get(kind, compare_labels)
        out[kind] = fn(_load(pa), _load(pb))
    return out


COMPARERS = {"levels": compare_levels, "cord_soft": compare_soft, "canal_soft": compare_soft}


def truth_dice(rec: RunRecord, case: Case) -> dict | None:
    """Mean Dice of the final labels against a phantom's exact labels (same grid)."""
    path = rec.outputs.get(f"{case.name}/final")
    if case.truth is None or path is None:
        return None
    res = compare_labels(nib.load(case.truth), nib.load(path))
    if "error" in res:
        return res
    truth_labels = set(np.unique(np.asanyarray(nib.load(case.truth).dataobj)).tolist()) - {0}
    per = {k: v for k, v in res["dice"].items() if int(k) in truth_labels}
    return {
        "mean_dice_over_truth_labels": round(float(np.mean(list(per.values()))), 4),
        "dice": per,
    }


# --------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------
def run_case(setup: Setup, case: Case, tools: list[str]) -> dict:
    runs: dict[str, RunRecord] = {}
    for tool in tools:
        run_dir = setup.work / case.name / tool
        print(f"[{case.name}] {tool} ...", flush=True)
        if tool == "spineseg":
            rec = run_spineseg(setup, case, run_dir)
        else:
            rec = run_reference(setup, tool, case.image, [case.name], run_dir, case.loc)
        state = "ok" if rec.ok else "FAILED " + "; ".join(rec.errors)
        print(
            f"[{case.name}] {tool}: {rec.wall_s:.1f} s, peak RSS {rec.peak_rss_mib:.0f} MiB, "
            f"PSS {rec.peak_pss_mib:.0f} MiB, {rec.max_processes} procs, {state}",
            flush=True,
        )
        runs[tool] = rec
    result: dict = {
        "case": case.spec,
        "name": case.name,
        "image": str(case.image),
        "localizer": str(case.loc) if case.loc else None,
        "shape": list(nib.load(case.image).shape),
        "zooms": [round(float(z), 4) for z in nib.load(case.image).header.get_zooms()[:3]],
        "axcodes": "".join(nib.aff2axcodes(nib.load(case.image).affine)),
        "runs": {t: asdict(r) for t, r in runs.items()},
        "compare": {},
    }
    if "ref" in runs:
        for tool in ("ref-preload", "spineseg"):
            if tool in runs:
                result["compare"][f"ref vs {tool}"] = compare_runs(
                    runs["ref"], runs[tool], case.name
                )
    elif "ref-preload" in runs and "spineseg" in runs:
        result["compare"]["ref-preload vs spineseg"] = compare_runs(
            runs["ref-preload"], runs["spineseg"], case.name
        )
    if case.truth is not None:
        result["truth"] = {t: truth_dice(r, case) for t, r in runs.items()}
    return result


DEFAULT_BATCH_CASE = "phantom:{seed}:{fov}"


def run_batch(setup: Setup, n: int, tools: list[str], template: str = DEFAULT_BATCH_CASE) -> dict:
    """N phantoms in one call per tool. `template` is a phantom spec with `{seed}` (5200+i)
    and optionally `{fov}` (cervical/lumbar alternating); with `:loc` every image gets its
    exact labels as localizer (reference: a folder matched by name; SpineSeg: the same)."""
    root = setup.work / "batch"
    in_dir, truth_dir, loc_dir = root / "inputs", root / "truth", root / "loc"
    for folder in (in_dir, truth_dir, loc_dir):
        shutil.rmtree(folder, ignore_errors=True)
    specs = [
        template.format(seed=5200 + i, fov="cervical" if i % 2 == 0 else "lumbar") for i in range(n)
    ]
    # The input folder must hold only the images: the truth goes to its own folder.
    cases = [prepare_case(spec, in_dir, truth_dir) for spec in specs]
    use_loc = any(c.loc is not None for c in cases)
    if use_loc:
        loc_dir.mkdir(parents=True)
        for case in cases:
            if case.loc is not None:
                shutil.copyfile(case.loc, loc_dir / case.image.name)
    names = [c.name for c in cases]
    runs: dict[str, RunRecord] = {}
    for tool in tools:
        run_dir = setup.work / "batch" / tool
        print(f"[batch x{n}] {tool} ...", flush=True)
        loc = loc_dir if use_loc else None
        if tool == "spineseg":
            rec = run_spineseg_batch(setup, in_dir, names, run_dir, loc)
        else:
            rec = run_reference(setup, tool, in_dir, names, run_dir, loc)
        print(
            f"[batch x{n}] {tool}: {rec.wall_s:.1f} s, peak RSS {rec.peak_rss_mib:.0f} MiB, "
            f"{'ok' if rec.ok else 'FAILED ' + '; '.join(rec.errors[:3])}",
            flush=True,
        )
        runs[tool] = rec
    agreement = {}
    base = "ref" if "ref" in runs else "ref-preload"
    for tool in tools:
        if tool == base or base not in runs:
            continue
        agreement[f"{base} vs {tool}"] = {
            name: {
                k: v.get("agreement_pct")
                for k, v in compare_runs(runs[base], runs[tool], name).items()
            }
            for name in names
        }
    truth = {
        tool: {c.name: (truth_dice(r, c) or {}).get("mean_dice_over_truth_labels") for c in cases}
        for tool, r in runs.items()
    }
    return {
        "n": n,
        "specs": specs,
        "localizer": str(loc_dir) if use_loc else None,
        "images": names,
        "truth_mean_dice": truth,
        "runs": {t: asdict(r) for t, r in runs.items()},
        "agreement_pct": agreement,
    }


def _agree(cmp: dict, kind: str) -> str:
    """`agree % (n differing voxels)` for labels, `same / total` positions for levels."""
    d = cmp.get(kind, {})
    if "missing" in d or "error" in d:
        return _cell(d, "")
    if kind == "levels":
        return f"{d['same_position']} / {d['n_levels']}"
    return f"{d['agreement_pct']} % ({d['n_diff']})"


def summary_lines(report: dict) -> list[str]:
    """One row per case: agreement with the reference and each tool's cost; batch ratios."""
    tools = report["meta"]["tools"]
    head = "| case | grid | loc | pair | final | step-1 | levels same | " + " | ".join(
        f"{t} wall s / RSS / PSS MiB" for t in tools
    )
    lines = [
        "## Summary",
        "",
        "Agreement = % of voxels with the same label (number of differing voxels) on the "
        "native grid; levels = markers at the same voxel / levels found by either tool. "
        "`failed` = the tool wrote no final labels.",
        "",
        head + " |",
        "|" + "---|" * (7 + len(tools)),
    ]
    for case in report["cases"]:
        grid = "x".join(str(v) for v in case.get("zooms", [])) + f" {case.get('axcodes', '')}"
        pairs = case["compare"] or {"–": {}}
        costs = []
        for t in tools:
            r = case["runs"].get(t)
            costs.append(
                "–"
                if r is None
                else f"{r['wall_s']:.0f} / {r['peak_rss_mib']:,.0f} / {r['peak_pss_mib']:,.0f}"
                + ("" if r["ok"] else " failed")
            )
        for pair, cmp in pairs.items():
            cells = [_agree(cmp, k) if cmp else "–" for k in ("final", "step1", "levels")]
            lines.append(
                f"| {case['name']} | {grid} | {'yes' if case.get('localizer') else 'no'} | "
                f"{pair} | " + " | ".join(cells + costs) + " |"
            )
    b = report.get("batch")
    if b and b["runs"]:
        base = "ref" if "ref" in b["runs"] else "ref-preload"
        lines += [
            "",
            f"Batch of {b['n']} (`{b['specs'][0]}` …, seeds {b['specs'][0].split(':')[1]}+): "
            + "; ".join(
                f"{t} {r['wall_s']:.0f} s, {r['peak_rss_mib']:,.0f} MiB RSS, "
                f"{r['peak_pss_mib']:,.0f} MiB PSS{'' if r['ok'] else ' (FAILED)'}"
                for t, r in b["runs"].items()
            )
            + ".",
        ]
        ours, ref = b["runs"].get("spineseg"), b["runs"].get(base)
        if ours and ref:
            lines.append(
                f"SpineSeg / {base}: wall {ours['wall_s'] / ref['wall_s']:.2f}, "
                f"peak RSS {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}, "
                f"peak PSS {ours['peak_pss_mib'] / ref['peak_pss_mib']:.2f}."
            )
    return [*lines, ""]


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.1f}{unit}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# SpineSeg vs the reference tool (totalspineseg 20260807)",
        "",
        f"Run {meta['date']} on {meta['machine']}; device {meta['device']}, SpineSeg threads "
        f"{meta['threads']}; weights `{meta['weights']}`; step-1 only: {meta['step1_only']}.",
        "Reference runs: `ref` = CLI with `--no-stalling`; `ref-preload` = same with torch and "
        "nnU-Net preloaded into its forkserver. Memory = peak of the sum over the whole process "
        "tree, polled every 0.2 s.",
        "",
        *summary_lines(report),
        "## Cost per image",
        "",
        "| case | tool | ok | wall (s) | peak RSS (MiB) | peak PSS (MiB) | processes | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for tool, r in case["runs"].items():
            errs = "; ".join(r["errors"])[:120].replace("|", "/")
            lines.append(
                f"| {case['name']} | {tool} | {'yes' if r['ok'] else 'no'} | "
                f"{_fmt(r['wall_s'])} | {_fmt(r['peak_rss_mib'])} | "
                f"{_fmt(r['peak_pss_mib'])} | {r['max_processes']} | {errs} |"
            )
    lines += [
        "",
        "## Agreement with the reference (voxel by voxel, native grid)",
        "",
        "| case | pair | final agree % | final mean Dice | step-1 agree % | "
        "step-1 mean Dice | levels same / total | cord max diff | canal max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for pair, cmp in case["compare"].items():
            f, s, lv = cmp.get("final", {}), cmp.get("step1", {}), cmp.get("levels", {})
            cells = [
                _cell(f, "agreement_pct"),
                _cell(f, "mean_dice"),
                _cell(s, "agreement_pct"),
                _cell(s, "mean_dice"),
                f"{lv['same_position']} / {lv['n_levels']}" if "n_levels" in lv else _cell(lv, ""),
                _cell(cmp.get("cord_soft", {}), "max_abs_diff"),
                _cell(cmp.get("canal_soft", {}), "max_abs_diff"),
            ]
            lines.append(f"| {case['name']} | {pair} | " + " | ".join(cells) + " |")
    diffs = [
        f"- {case['name']}, {pair}, {kind}: {d['n_diff']} voxels differ; most: "
        + ", ".join(f"{t['ref']}→{t['ours']} ×{t['voxels']}" for t in d["top_diffs"][:5])
        for case in report["cases"]
        for pair, cmp in case["compare"].items()
        for kind in LABEL_KINDS
        if (d := cmp.get(kind, {})).get("n_diff")
    ]
    if diffs:
        lines += ["", "Differing voxels (reference label → other label × count):", "", *diffs]
    truths = [(c["name"], c["truth"]) for c in report["cases"] if c.get("truth")]
    if truths:
        lines += [
            "",
            "## Phantoms: final labels vs exact truth (mean Dice over truth labels)",
            "",
            "| case | " + " | ".join(TOOLS) + " |",
            "|---|" + "---|" * len(TOOLS),
        ]
        for name, t in truths:
            vals = [(t.get(tool) or {}).get("mean_dice_over_truth_labels") for tool in TOOLS]
            lines.append(
                f"| {name} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in vals) + " |"
            )
    if report.get("batch"):
        b = report["batch"]
        lines += [
            "",
            f"## Batch: {b['n']} phantoms in one call per tool",
            "",
            "| tool | ok | wall (s) | s / image | peak RSS (MiB) | peak PSS (MiB) | processes |",
            "|---|---|---|---|---|---|---|",
        ]
        for tool, r in b["runs"].items():
            lines.append(
                f"| {tool} | {'yes' if r['ok'] else 'no'} | {_fmt(r['wall_s'])} | "
                f"{_fmt(r['wall_s'] / b['n'])} | {_fmt(r['peak_rss_mib'])} | "
                f"{_fmt(r['peak_pss_mib'])} | {r['max_processes']} |"
            )
    if report.get("notes"):
        lines += ["", report["notes"].rstrip()]
    lines.append("")
    return "\n".join(lines)


def _cell(d: dict, key: str) -> str:
    if "error" in d:
        return "grid differs"
    if "missing" in d:
        return "missing: " + ", ".join(d["missing"])
    v = d.get(key)
    return "–" if v is None else str(v)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_spineseg_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spineseg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bids_app.cli.main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="case specs: phantom:SEED[:FOV[:VOXEL[:AXCODES[:CONTRAST]]]][:lr=MM]"
        "[:oblique=X,Y,Z][:loc] (loc: the phantom's exact labels are both tools' localizer)"
        ", real:<path under shared/data>, file:<path>; "
        "'all-real' = every image of shared/data/MANIFEST.tsv",
    )
    p.add_argument("cases", nargs="*", help=f"default: {' '.join(DEFAULT_CASES)}")
    p.add_argument(
        "--weights",
        type=Path,
        default=DEMO_WEIGHTS,
        help="folder holding Dataset101_*/Dataset102_* (default: SpineSeg demo models)",
    )
    p.add_argument(
        "--refenv",
        type=Path,
        default=Path("/work/refenv"),
        help="reference venv made by benchmarks/reference_env.sh",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="SpineSeg threads (the reference uses all CPUs on its own)",
    )
    p.add_argument("--tools", default=",".join(TOOLS), help=f"subset of {','.join(TOOLS)}")
    p.add_argument(
        "--batch",
        type=int,
        default=10,
        metavar="N",
        help="phantoms in the batch run (0: no batch run; default 10)",
    )
    p.add_argument(
        "--batch-case",
        default=DEFAULT_BATCH_CASE,
        metavar="TEMPLATE",
        help="phantom spec of the batch images with {seed} and optionally {fov} (cervical/lumbar "
        f"alternating); default {DEFAULT_BATCH_CASE!r}",
    )
    p.add_argument("--batch-only", action="store_true", help="skip the per-image cases")
    p.add_argument("--step1", action="store_true", help="step 1 only for every tool")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run (default 1800)")
    p.add_argument(
        "--preload",
        default=",".join(DEFAULT_PRELOAD),
        help="modules the ref-preload wrapper preloads into the forkserver",
    )
    p.add_argument(
        "--spineseg-cmd",
        help="command that runs the spineseg CLI (default: the "
        "console script next to this Python, else python -m bids_app.cli.main)",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    p.add_argument(
        "--notes",
        type=Path,
        help="Markdown file appended to the report (and kept in the JSON): findings written "
        "after looking at the outputs",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite the Markdown (and notes) from the existing JSON",
    )
    p.add_argument(
        "--engine-batch", nargs=2, type=Path, metavar=("IN_DIR", "OUT_DIR"), help=argparse.SUPPRESS
    )
    p.add_argument("--engine-loc", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_batch:
        return engine_batch(
            *args.engine_batch, args.weights, args.device, args.threads, args.step1, args.engine_loc
        )
    json_path, md_path = args.out / "compare_reference.json", args.out / "compare_reference.md"
    if args.report_only:
        report = json.loads(json_path.read_text())
        if args.notes:
            report["notes"] = args.notes.read_text()
        _write_atomic(json_path, json.dumps(report, indent=1) + "\n")
        _write_atomic(md_path, markdown(report))
        print(f"wrote {json_path} and {md_path}")
        return 0
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        raise SystemExit(f"error: unknown tools {sorted(unknown)}; choose from {TOOLS}")
    if {"ref", "ref-preload"} & set(tools) and not (args.refenv / "bin" / "totalspineseg").exists():
        raise SystemExit(
            f"error: no reference tool in {args.refenv}; run benchmarks/reference_env.sh first"
        )
    cases = [] if args.batch_only else args.cases or DEFAULT_CASES
    specs = [s for c in cases for s in (real_scans() if c == "all-real" else [c])]
    work = args.out / "work"
    setup = Setup(
        refenv=args.refenv,
        weights=args.weights.resolve(),
        data_dir=reference_data_dir(args.weights.resolve(), work / "ref-data"),
        device=args.device,
        threads=args.threads,
        timeout=args.timeout,
        step1_only=args.step1,
        preload=tuple(m for m in args.preload.split(",") if m),
        work=work,
        spineseg_cmd=args.spineseg_cmd.split() if args.spineseg_cmd else default_spineseg_cmd(),
    )
    report: dict = {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} "
            "GiB)",
            "reference": REFERENCE,
            "device": args.device,
            "threads": args.threads,
            "weights": str(setup.weights),
            "step1_only": args.step1,
            "tools": tools,
            "preload": list(setup.preload),
            "timeout_s": args.timeout,
            "spineseg_cmd": setup.spineseg_cmd,
        },
        "cases": [],
        "batch": None,
        "notes": args.notes.read_text() if args.notes else None,
    }
    for spec in specs:
        case = prepare_case(spec, work / "inputs")
        report["cases"].append(run_case(setup, case, tools))
        _write_atomic(json_path, json.dumps(report, indent=1) + "\n")
    if args.batch > 0:
        report["batch"] = run_batch(setup, args.batch, tools, args.batch_case)
    _write_atomic(json_path, json.dumps(report, indent=1) + "\n")
    _write_atomic(md_path, markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
