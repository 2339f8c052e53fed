"""One case or one batch through every selected tool, then the comparisons."""

from __future__ import annotations

import shutil
from dataclasses import asdict

import nibabel as nib

from .cases import Case, prepare_case
from .config import Setup
from .measure import RunRecord
from .metrics import compare_runs, truth_dice
from .run_ours import run_spineseg, run_spineseg_batch
from .run_ref import run_reference


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
