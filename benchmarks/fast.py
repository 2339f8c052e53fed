"""The fast profile (`--fast`) at official size, its agreement, and the other levers (issue 30).

    python -m benchmarks.fast [--work DIR] [--threads N] [--skip-standins] [--skip-demo]
                              [--skip-levers] [--seeds 2]

1. Official size, one run on one machine. Stand-in networks of TotalSpineSeg's architecture
   and size (ResEnc-L planned by nnU-Net 2.8.1 on 1 mm whole-spine phantoms, RANDOM weights,
   `benchmarks/realsize.py`'s planning) segment a cervical and a whole-spine phantom at 1 mm,
   default and fast interleaved (cervical A B, whole A B, cervical B A), each in a fresh
   process so its peak RSS is its own. Measured per image: both networks through SpineSeg's
   `NnUNetModel` (step 1 on the whole 1 mm grid with probabilities, step 2 on the crop step 1
   would give) plus the rest of the pipeline (taken from the demo models on the same image,
   the same for both modes).
   The tile step alone (what a CPU without a bfloat16 unit gets from --fast) is measured too.
2. Levers on a quarter of the official patch (--full-patch-levers: the whole patch) through
   the official-size network, each against float32 on the same input: channels-last
   3-D layout, oneDNN off, torch.compile, 1 thread vs all, bfloat16 autocast. A lever is worth
   adopting only if it is >= 1.1x faster AND its float32 output is byte-identical.
3. Agreement with the demo models (trained weights, so labels mean something) on held-out
   phantoms of every field of view (seeds 5000+, never trained on): per-label Dice of the
   final labels fast vs default (per image and pooled per label), and whether the level labels
   are identical (same labels present, no structure renamed, same landmarks, same level
   markers). Targets: per-label Dice >= 0.98, level labels identical on >= 95 % of images.

Writes benchmarks/out/fast.json. Not a test: numbers, not verdicts; the machine is shared,
so its load average is recorded at each measurement and only ratios within this run count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.realsize import (
    DATASETS,
    dice,
    machine,
    on_model_grid,
    patches,
    plan_standins,
    renamed,
    write_standin_weights,
)
from bids_app.engine.options import FAST_PRECISION, FAST_TILE_STEP, SegmentOptions
from bids_app.phantom.render import FOVS, Acquisition, render_phantom
from bids_app.plumbing import labels as L

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "default": {"tile_step": 0.5, "precision": "auto"},
    "fast": {"tile_step": FAST_TILE_STEP, "precision": FAST_PRECISION},
    "tile_step_only": {"tile_step": FAST_TILE_STEP, "precision": "auto"},
}
DICE_TARGET, LEVELS_TARGET = 0.98, 0.95


# --------------------------------------------------------------------------- child processes
def child_image(spec: dict) -> dict:
    """Both stand-in networks on one image in one mode, in this fresh process."""
    import torch

    from bids_app.nnunet.model import NnUNetModel

    models = {
        step: NnUNetModel.load(
            Path(spec["weights"]) / name, torch.device("cpu"), threads=spec["threads"]
        )
        for step, name in DATASETS.items()
    }
    data, channels2 = on_model_grid(spec["image"], spec["truth"])
    mode = MODES[spec["mode"]]
    out: dict = {"grid_1mm": list(data.shape), "step2_crop": list(channels2.shape[1:])}
    # CPU seconds of all threads too: on a shared machine they measure the work, not the load.
    t0, c0 = time.perf_counter(), time.process_time()
    models["step1"].predict(data[None], return_probabilities=True, **mode)
    t1, c1 = time.perf_counter(), time.process_time()
    models["step2"].predict(channels2, **mode)
    t2, c2 = time.perf_counter(), time.process_time()
    out.update(
        step1_s=t1 - t0,
        step2_s=t2 - t1,
        step1_cpu_s=c1 - c0,
        step2_cpu_s=c2 - c1,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return out


def _forward(net, x, reps: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds (all threads) of `reps` forwards after one warm-up, and the
    last output. On a shared machine the CPU seconds are the ones to compare."""
    import torch

    with torch.inference_mode():
        y = net(x)
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            y = net(x)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus)), y


def child_levers(spec: dict) -> dict:
    """Each lever on one official-size patch against float32 on the same input."""
    import torch

    from bids_app.nnunet.model import NnUNetModel, precision_context

    torch.set_num_threads(spec["threads"])
    model = NnUNetModel.load(
        Path(spec["weights"]) / DATASETS["step1"], torch.device("cpu"), threads=spec["threads"]
    )
    net = model._predictor.network.eval()
    # A quarter of the official patch (half along SI and AP; still divisible by the network's
    # strides) keeps each lever to seconds on a shared machine; the layers are the same.
    full = model._predictor.configuration_manager.patch_size
    patch = [full[0] // 2, full[1] // 2, *full[2:]] if spec["quarter"] else list(full)
    torch.manual_seed(0)
    x = torch.randn(1, model.num_input_channels, *patch)
    reps = spec["reps"]
    base_s, base_cpu, base = _forward(net, x, reps)
    rows: dict = {
        "fp32": {"seconds": base_s, "cpu_s": base_cpu, "speedup_cpu": 1.0, "identical": True}
    }

    def record(name: str, timing: tuple[float, float, object], note: str = "") -> None:
        seconds, cpu, y = timing
        y = y.float()  # type: ignore[attr-defined]
        rows[name] = {
            "seconds": seconds,
            "cpu_s": cpu,
            "speedup_wall": base_s / seconds,
            "speedup_cpu": base_cpu / cpu,
            # Equal values (layouts may differ: torch.equal said no for channels-last copies
            # whose every value matched).
            "identical": bool((y == base).all()),
            "max_abs_diff": float((y - base).abs().max()),
            "note": note,
        }
        print(f"    lever {name}: {cpu:.1f} CPU s ({base_cpu / cpu:.2f}x)", flush=True)

    cpu = torch.device("cpu")
    with precision_context("bf16", cpu):
        record("bf16_autocast", _forward(net, x, reps), "the --fast precision; never identical")
    torch.set_num_threads(1)
    record(
        "fp32_1_thread",
        _forward(net, x, reps),
        "CPU seconds per patch with 1 thread: below fp32's, two 1-thread workers beat one "
        "worker with all threads",
    )
    torch.set_num_threads(spec["threads"])
    with torch.backends.mkldnn.flags(enabled=False):
        record("fp32_onednn_off", _forward(net, x, reps))
    net_cl = net.to(memory_format=torch.channels_last_3d)
    x_cl = x.to(memory_format=torch.channels_last_3d)
    record("fp32_channels_last_3d", _forward(net_cl, x_cl, reps))
    with precision_context("bf16", cpu):
        record("bf16_channels_last_3d", _forward(net_cl, x_cl, reps), "against bf16_autocast")
    net = net.to(memory_format=torch.contiguous_format)
    if spec["compile"]:
        t0 = time.perf_counter()
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(x)
        note = f"first call (compilation) took {time.perf_counter() - t0:.0f} s"
        record("fp32_torch_compile", _forward(compiled, x, reps), note)
    return {"patch_nnunet_order": patch, "threads": spec["threads"], "levers": rows}


def run_child(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.fast", f"--child-{kind}", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {kind} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 1. official size
def standin_weights(work: Path) -> tuple[Path, dict]:
    """The stand-in weights folder and its facts; planned once per work folder."""
    facts_path = work / "facts.json"
    if facts_path.is_file():  # the planning of an earlier run in the same work folder
        saved = json.loads(facts_path.read_text())
        return Path(saved["weights"]), saved["facts"]
    print("planning with nnUNetPlannerResEncL ...", flush=True)
    weights, facts = write_standin_weights(work, plan_standins(work, 4, "whole"))
    facts_path.write_text(json.dumps({"weights": str(weights), "facts": facts}, indent=2))
    return weights, facts


ORDER = (
    "whole:default",
    "whole:fast",
    "cervical:default",
    "cervical:fast",
    "whole:tile_step_only",
    "cervical:fast",
    "cervical:default",
)


def official_size(
    work: Path, threads: int, order: list[str], save: Callable[[dict], None] | None = None
) -> dict:
    """Each `case:mode` of `order` in a fresh child; `save` gets the result after each one
    (a run stopped early keeps what it measured)."""
    weights, facts = standin_weights(work)
    images = {}
    wanted = {item.split(":")[0] for item in order}
    for name, make in (
        ("cervical", lambda: render_phantom(5000, Acquisition(fov="cervical"))),
        ("whole", lambda: render_phantom(5001)),
    ):
        if name not in wanted:
            continue
        ph = make()
        images[name] = work / f"{name}.nii.gz"
        nib.save(ph.image, images[name])
        nib.save(ph.labels, work / f"{name}_truth.nii.gz")
    rest, rest_cpu = rest_of_pipeline_cost(images, threads)
    patch = facts["step1"]["patch_size_nibabel_order"]
    runs: list[dict] = []
    rest_s = {c: rest[c]["rest_s"] for c in images}

    def result() -> dict:
        return {
            "standins": facts,
            "order": order,
            "runs": runs,
            "rest_of_pipeline": rest,
            "rest_of_pipeline_cpu_s": rest_cpu,
            "summary": summarise(runs, rest_s, rest_cpu),
            "target": 0.35,
        }

    for case, mode in (item.split(":") for item in order):
        spec = {
            "image": str(images[case]),
            "truth": str(work / f"{case}_truth.nii.gz"),
            "weights": str(weights),
            "threads": threads,
            "mode": mode,
        }
        load = os.getloadavg()[0]
        r = run_child("image", spec)
        r.update(case=case, mode=mode, loadavg_before=load, loadavg_after=os.getloadavg()[0])
        r["network_s"] = r["step1_s"] + r["step2_s"]
        r["patches"] = {
            "step1": patches(r["grid_1mm"], patch, MODES[mode]["tile_step"]),
            "step2": patches(r["step2_crop"], patch, MODES[mode]["tile_step"]),
        }
        print(
            f"  {case} {mode}: networks {r['network_s']:.1f} s, {r['peak_rss_mib']:.0f} MiB "
            f"(load {load:.1f})",
            flush=True,
        )
        runs.append(r)
        if save is not None:
            save(result())
    return result()


def rest_of_pipeline_cost(
    images: dict[str, Path], threads: int
) -> tuple[dict[str, dict], dict[str, float]]:
    """One whole demo-model run per image: its stage times without the networks (wall), and
    its CPU seconds, an upper bound of the rest of the pipeline (it includes the small demo
    networks) that the load of a shared machine leaves as it is."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights("demo"), device="cpu", threads=threads)
    rest, cpu = {}, {}
    for name, path in images.items():
        img = nib.load(path)
        c0 = time.process_time()
        res = engine.segment(img, SegmentOptions(assume_top_disc=63), name=name)
        cpu[name] = time.process_time() - c0
        stages = {k: v for k, v in res.timings.items() if not k.endswith(("_network", "_device"))}
        rest[name] = {"stages_s": stages, "rest_s": sum(stages.values()), "errors": res.errors}
        print(f"  rest of pipeline, {name}: {cpu[name]:.1f} CPU s", flush=True)
    return rest, cpu


def summarise(runs: list[dict], rest_s: dict[str, float], rest_cpu: dict[str, float]) -> dict:
    """Per image and mode: mean time (wall, and CPU where recorded), peak RSS, fast/default.

    The rest of the pipeline (the same in both modes) is added to the networks' time: its wall
    time to the wall times, its CPU time to the CPU times. On a shared machine the CPU ratio
    is the one to read.
    """
    summary = {}
    for case, rest in rest_s.items():
        mine = {m: [r for r in runs if r["case"] == case and r["mode"] == m] for m in MODES}
        mine = {m: rs for m, rs in mine.items() if rs}
        wall = {m: float(np.mean([r["network_s"] for r in rs])) + rest for m, rs in mine.items()}
        cpu = {
            m: float(np.mean([r["step1_cpu_s"] + r["step2_cpu_s"] for r in rs])) + rest_cpu[case]
            for m, rs in mine.items()
            if all("step1_cpu_s" in r for r in rs)
        }
        peak = {m: max(r["peak_rss_mib"] for r in rs) for m, rs in mine.items()}
        row = {
            "image_s": wall,
            "image_cpu_s": cpu,
            "peak_rss_mib": peak,
            "rest_of_pipeline_s": rest,
        }
        if "default" in wall and "fast" in wall:
            row["fast_over_default"] = wall["fast"] / wall["default"]
            row["fast_peak_over_default"] = peak["fast"] / peak["default"]
        if "default" in cpu and "fast" in cpu:
            row["fast_over_default_cpu"] = cpu["fast"] / cpu["default"]
        if "default" in cpu and "tile_step_only" in cpu:
            row["tile_step_only_over_default_cpu"] = cpu["tile_step_only"] / cpu["default"]
        if "tile_step_only" in wall and "default" in wall:
            row["tile_step_only_over_default"] = wall["tile_step_only"] / wall["default"]
        summary[case] = row
    return summary


# --------------------------------------------------------------------------- 3. agreement
def compare_results(ref, other) -> dict:
    """Fast vs default of one image: per-label Dice, level identity (EngineResults)."""
    key = "final" if "final" in ref.native and "final" in other.native else "step1"
    a = np.asarray(ref.native[key].dataobj) if key in ref.native else None
    b = np.asarray(other.native[key].dataobj) if key in other.native else None
    row: dict = {"compared": key, "both_final": key == "final"}
    if a is None or b is None:
        row.update(levels_identical=False, reason=f"{key} missing in one mode")
        return row
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    row["dice"] = {L.level_name(int(v)): dice(a == v, b == v) for v in labels}
    row["overlap"] = {
        L.level_name(int(v)): [
            int(np.logical_and(a == v, b == v).sum()),
            int((a == v).sum()),
            int((b == v).sum()),
        ]
        for v in labels
    }
    row["min_dice"] = min(row["dice"].values(), default=1.0)
    row["voxels_differing"] = int((a != b).sum())
    lv_a = np.asarray(ref.native["levels"].dataobj) if "levels" in ref.native else None
    lv_b = np.asarray(other.native["levels"].dataobj) if "levels" in other.native else None
    markers = [
        sorted(int(v) for v in np.unique(x) if v) if x is not None else None for x in (lv_a, lv_b)
    ]
    row["renamed"] = renamed(a, b)
    row["same_labels_present"] = set(np.unique(a)) == set(np.unique(b))
    row["same_landmarks"] = ref.landmarks == other.landmarks
    row["same_level_markers"] = markers[0] == markers[1]
    row["levels_identical"] = bool(
        key == "final"
        and row["same_labels_present"]
        and not row["renamed"]
        and row["same_landmarks"]
        and row["same_level_markers"]
        and ref.errors == other.errors
    )
    return row


def demo_agreement(
    seeds: int, threads: int, fast: SegmentOptions, save: Callable[[dict], None]
) -> dict:
    """Default vs fast with the demo models, seed by seed over every field of view; `save`
    gets the summary after each image (a long run stopped early keeps what it measured)."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights("demo"), device="cpu", threads=threads)
    default = SegmentOptions()
    rows: list[dict] = []
    for seed in range(5000, 5000 + seeds):
        for fov in FOVS:
            ph = render_phantom(seed, Acquisition(fov=fov))
            res, secs = {}, {}
            for tag, options in (("default", default), ("fast", fast)):
                t0 = time.perf_counter()
                res[tag] = engine.segment(ph.image, options, name=f"{fov} {seed}")
                secs[tag] = time.perf_counter() - t0
            row = {"fov": fov, "seed": seed, "seconds": secs}
            row.update(compare_results(res["default"], res["fast"]))
            row["errors"] = {k: r.errors for k, r in res.items()}
            rows.append(row)
            print(
                f"  demo {fov} {seed}: min Dice {row.get('min_dice', float('nan')):.3f}, "
                f"levels identical {row['levels_identical']}, {secs['default']:.1f} / "
                f"{secs['fast']:.1f} s",
                flush=True,
            )
            save(agreement_summary(rows, fast))
    return agreement_summary(rows, fast)


def agreement_summary(rows: list[dict], fast: SegmentOptions) -> dict:
    """Pooled per-label Dice and the share of images whose level labels are identical."""
    pooled: dict[str, list[int]] = {}
    for row in rows:
        for name, (both, na, nb) in row.get("overlap", {}).items():
            acc = pooled.setdefault(name, [0, 0, 0])
            acc[0] += both
            acc[1] += na
            acc[2] += nb
    pooled_dice = {n: 2 * b / (na + nb) if na + nb else 1.0 for n, (b, na, nb) in pooled.items()}
    identical = float(np.mean([r["levels_identical"] for r in rows]))
    worst = min(pooled_dice, key=pooled_dice.__getitem__, default=None)
    return {
        "fast_options": fast.record(),
        "images": len(rows),
        "rows": rows,
        "pooled_dice_per_label": pooled_dice,
        "lowest_pooled_dice": [worst, pooled_dice[worst]] if worst else None,
        "labels_below_target": sorted(n for n, d in pooled_dice.items() if d < DICE_TARGET),
        "share_images_levels_identical": identical,
        "median_image_min_dice": float(np.median([r.get("min_dice", 0.0) for r in rows])),
        "targets": {"per_label_dice": DICE_TARGET, "levels_identical_share": LEVELS_TARGET},
    }


# --------------------------------------------------------------------------- docs
MARKERS = ("<!-- fast:start -->", "<!-- fast:end -->")


def render(report: dict) -> list[str]:
    """The tables of docs/expect.md's fast-profile section, from fast.json."""
    m = report["machine"]
    lines = [
        f"_{report['when']}; {m['cpu']} ({'with' if m.get('bf16_native') else 'without'} a "
        f"bfloat16 unit), {report['threads']} threads, shared with other work (load average "
        f"{report['loadavg_start'][0]:.0f} at the start); torch {m['torch']}, nnU-Net "
        f"{m['nnunetv2']}. `python -m benchmarks.fast`; numbers in `benchmarks/out/fast.json`._",
        "",
    ]
    off = report.get("official_size")
    if off:
        lines += [
            "| image (stand-ins, official size) | mode | patches step 1 + 2 | networks + rest, "
            "CPU s | wall s | peak RSS | / default, CPU | / default, wall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for case, row in off["summary"].items():
            for mode in MODES:
                runs = [r for r in off["runs"] if r["case"] == case and r["mode"] == mode]
                if not runs:
                    continue
                p = runs[0]["patches"]
                cpu, wall = row["image_cpu_s"], row["image_s"]
                ratios = " | "
                if mode != "default" and "default" in cpu and mode in cpu:
                    ratios = (
                        f"**{cpu[mode] / cpu['default']:.2f}** "
                        f"| **{wall[mode] / wall['default']:.2f}**"
                    )
                lines.append(
                    f"| {case} | {mode.replace('_', ' ')} | {p['step1']} + {p['step2']} "
                    f"| {cpu.get(mode, float('nan')):.0f} | {wall[mode]:.0f} "
                    f"| {row['peak_rss_mib'][mode] / 1024:.1f} GiB | {ratios} |"
                )
        lines.append("")
    for key in ("demo_agreement", "demo_agreement_bf16_only"):
        lines += agreement_lines(report.get(key))
    levers = report.get("levers")
    if levers:
        lines += [
            f"Other levers, one forward of the step-1 stand-in on a "
            f"{'x'.join(map(str, levers['patch_nnunet_order']))} input (CPU seconds, all "
            "threads):",
            "",
            "| lever | CPU s | speed-up | output identical to float32 | >= 1.1x and identical "
            "| adopted |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in levers["levers"].items():
            bar = r["speedup_cpu"] >= 1.1 and r["identical"]
            adopt = {"fp32": "the default", "bf16_autocast": "in --fast"}.get(name, "no")
            lines.append(
                f"| {name.replace('_', ' ')} | {r['cpu_s']:.1f} | {r['speedup_cpu']:.2f}x "
                f"| {'yes' if r['identical'] else 'no'} | {'yes' if bar else 'no'} | {adopt} |"
            )
        lines.append("")
    return lines


def agreement_lines(demo: dict | None) -> list[str]:
    """A table of fast-vs-default agreement with the demo models, per field of view."""
    if not demo:
        return []
    lines: list[str] = []
    low, o = demo["lowest_pooled_dice"], demo["fast_options"]
    by_fov: dict[str, list[dict]] = {}
    for r in demo["rows"]:
        by_fov.setdefault(r["fov"], []).append(r)
    lines += [
        f"Agreement with the default, demo models, {demo['images']} held-out phantoms, tile "
        f"step {o['tile_step']} and precision {o.get('precision', 'auto')}:",
        "",
        "| field of view | images | lowest per-label Dice of an image (median over images) "
        "| level labels identical |",
        "|---|---|---|---|",
    ]
    for fov, rows in by_fov.items():
        mins = [r.get("min_dice", 0.0) for r in rows]
        same = sum(r["levels_identical"] for r in rows)
        lines.append(
            f"| {fov} | {len(rows)} | {min(mins):.3f} ({float(np.median(mins)):.3f}) "
            f"| {same} / {len(rows)} |"
        )
    lines += [
        "",
        f"Pooled over the images, per label: lowest Dice {low[1]:.3f} ({low[0]}); labels "
        f"below {DICE_TARGET}: {', '.join(demo['labels_below_target']) or 'none'}; level "
        f"labels identical on {demo['share_images_levels_identical']:.0%} of the images.",
        "",
    ]
    return lines


def write_docs(report: dict, page: Path = ROOT / "docs" / "expect.md") -> None:
    text = page.read_text()
    start, end = MARKERS
    if start not in text:
        return
    head, rest = text.split(start, 1)
    page.write_text(head + start + "\n" + "\n".join(render(report)) + end + rest.split(end, 1)[1])


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="work folder (stand-in weights are reused)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seeds", type=int, default=2, help="held-out seeds per field of view")
    ap.add_argument("--reps", type=int, default=2, help="timed forwards per lever")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow)")
    ap.add_argument(
        "--full-patch-levers", action="store_true", help="levers on the full patch (4x slower)"
    )
    ap.add_argument(
        "--order", nargs="+", default=list(ORDER), help="case:mode runs at official size"
    )
    ap.add_argument("--skip-standins", action="store_true")
    ap.add_argument("--demo-tile-step", type=float, default=FAST_TILE_STEP, help="fast variant")
    ap.add_argument("--demo-precision", default=FAST_PRECISION, help="fast variant")
    ap.add_argument("--skip-levers", action="store_true")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--docs", action="store_true", help="only rewrite docs/expect.md's tables")
    ap.add_argument("--child-image", help=argparse.SUPPRESS)
    ap.add_argument("--child-levers", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_image:
        print(json.dumps(child_image(json.loads(args.child_image))))
        return
    if args.child_levers:
        print(json.dumps(child_levers(json.loads(args.child_levers))))
        return
    if args.docs:
        write_docs(json.loads((args.out / "fast.json").read_text()))
        return
    os.environ.setdefault("nnUNet_def_n_proc", str(args.threads))
    work = args.work or Path(tempfile.mkdtemp(prefix="spineseg-fast-"))
    work.mkdir(parents=True, exist_ok=True)
    target = args.out / "fast.json"
    report: dict = json.loads(target.read_text()) if target.is_file() else {}
    report.update(
        when=time.strftime("%Y-%m-%d %H:%M"),
        machine=machine(),
        threads=args.threads,
        loadavg_start=list(os.getloadavg()),
        WARNING="official-size rows use stand-in networks with RANDOM weights: time and "
        "memory only; agreement comes from the demo models",
    )
    from bids_app.nnunet.model import cpu_bf16_native

    report["machine"]["bf16_native"] = cpu_bf16_native()

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, default=str))

    if not args.skip_standins:

        def keep_official(result: dict) -> None:
            report["official_size"] = result
            save()

        keep_official(official_size(work, args.threads, args.order, keep_official))
    if not args.skip_demo:
        fast = SegmentOptions(tile_step=args.demo_tile_step, precision=args.demo_precision)

        def keep(summary: dict) -> None:
            report["demo_agreement"] = summary
            save()

        keep(demo_agreement(args.seeds, args.threads, fast, keep))
    if not args.skip_levers:
        spec = {
            "weights": str(standin_weights(work)[0]),
            "threads": args.threads,
            "reps": args.reps,
            "compile": args.compile,
            "quarter": not args.full_patch_levers,
        }
        print("levers on one official-size patch ...", flush=True)
        report["levers"] = run_child("levers", spec)
        report["levers"]["loadavg"] = list(os.getloadavg())
        save()
    report["loadavg_end"] = list(os.getloadavg())
    report["peak_rss_this_process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
