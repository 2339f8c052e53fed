"""The fast profile (`--fast`) at official size, its agreement, and the other levers (issue 30).

    python -m benchmarks.fast [--work DIR] [--threads N] [--order CASE:MODE ...]
                              [--skip-standins] [--skip-demo] [--skip-levers] [--shapes]
                              [--compile] [--seeds 4] [--candidates NAME=STEP,PRECISION ...]

1. Official size, one run on one machine. Stand-in networks of TotalSpineSeg's architecture
   and size (ResEnc-L planned by nnU-Net 2.8.1 on 1 mm whole-spine phantoms, RANDOM weights,
   `benchmarks/realsize.py`'s planning) segment a cervical and a whole-spine phantom at 1 mm,
   in the modes of --order (`default`, `fast`, `bf16_fit`, or `STEP,PRECISION` such as
   `0.75,bf16`: a tile step other than 0.5 also fits the patch to small images), each in a
   fresh process so its peak RSS is its own. Measured per image: both networks through
   SpineSeg's `NnUNetModel` (step 1 on the whole 1 mm grid with probabilities, step 2 on the
   crop step 1 would give; the patches each network computed are counted at its input) plus
   the rest of the pipeline (a demo-model run on the same image without its networks' CPU
   time, the same for every mode).
2. Levers on a quarter of the official patch (--full-patch-levers: the whole patch) through
   the official-size network, each against float32 on the same input: channels-last
   3-D layout, oneDNN off, torch.compile (--compile; its compile time too), 1 thread vs all,
   two one-thread workers at once, bfloat16 autocast; --shapes times the first and second
   forward of each patch shape the official images use. A lever is worth adopting only if
   it is >= 1.1x faster AND its float32 output is byte-identical.
3. Agreement with the demo models (trained weights, so labels mean something) on held-out
   phantoms of every field of view (seeds 5000+, never trained on; T2w and T1w by seed, plus
   a cervical image cut to 120 mm, the only kind on which the patch fit acts with the demo
   models' small patch): per-label Dice of the final labels of each candidate vs the default
   (per image and pooled per label), and whether the level labels are identical (same labels
   present, no structure renamed, same landmarks, same level markers). Targets: per-label
   Dice >= 0.98, level labels identical on >= 95 % of images.

Writes benchmarks/out/fast.json. Not a test: numbers, not verdicts; the machine is shared,
so its load average is recorded at each measurement and only ratios within this run count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks.realsize import (
    DATASETS,
    dice,
    machine,
    on_model_grid,
    plan_standins,
    renamed,
    write_standin_weights,
)
from bids_app.engine.options import FAST_PRECISION, FAST_TILE_STEP, SegmentOptions
from bids_app.phantom.render import FOVS, Acquisition, render_phantom
from bids_app.plumbing import labels as L

ROOT = Path(__file__).resolve().parents[1]
# Named modes; `STEP,PRECISION` (e.g. `0.75,bf16`) names any other (`mode_of`). Any tile
# step other than the reference's also fits the patch to small images
# (bids_app.nnunet.model.fitted_patch); bf16_fit isolates that fit at the reference step.
MODES: dict[str, dict[str, Any]] = {
    "default": {"tile_step": 0.5, "precision": "auto"},
    "fast": {"tile_step": FAST_TILE_STEP, "precision": FAST_PRECISION},
    "bf16_fit": {"tile_step": 0.5, "precision": "bf16", "fit_patch": True},
}
DICE_TARGET, LEVELS_TARGET = 0.98, 0.95


def mode_label(name: str) -> str:
    """How a mode reads in the docs' tables."""
    mode = mode_of(name)
    if name == "default":
        return "default"
    text = f"tile step {mode['tile_step']}, {mode['precision']}"
    if mode.get("fit_patch") or (mode["tile_step"] != 0.5 and mode.get("fit_patch") is None):
        text += ", patch cut to the image"
    return f"**--fast** ({text})" if name == "fast" else text


def mode_of(name: str) -> dict[str, Any]:
    """A named mode of MODES, or `STEP,PRECISION` (e.g. `0.75,bf16`) for a candidate."""
    if name in MODES:
        return MODES[name]
    step, precision = name.split(",")
    return {"tile_step": float(step), "precision": precision}


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
    mode = mode_of(spec["mode"])
    out: dict = {"grid_1mm": list(data.shape), "step2_crop": list(channels2.shape[1:])}
    # The patches each network really computes (nnU-Net order), counted at its input.
    inputs: dict[str, list] = {step: [] for step in models}
    for step, model in models.items():
        model._predictor.network.register_forward_pre_hook(
            lambda _m, args, seen=inputs[step]: seen.append(list(args[0].shape[2:]))
        )
    # CPU seconds of all threads too: on a shared machine they measure the work, not the load.
    t0, c0 = time.perf_counter(), time.process_time()
    models["step1"].predict(data[None], return_probabilities=True, **mode)
    t1, c1 = time.perf_counter(), time.process_time()
    models["step2"].predict(channels2, **mode)
    t2, c2 = time.perf_counter(), time.process_time()
    out["network_inputs"] = {step: {"count": len(v), "shape": v[0]} for step, v in inputs.items()}
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


def _two_workers(net, x, reps: int, threads: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds per forward when two Python threads (two device workers)
    each run one forward with one torch thread at the same time; and the last output."""
    import threading

    import torch

    torch.set_num_threads(1)
    outputs: list = [None, None]

    def one(i: int) -> None:
        with torch.inference_mode():
            outputs[i] = net(x)

    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        workers = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        walls.append((time.perf_counter() - t0) / 2)
        cpus.append((time.process_time() - c0) / 2)
    assert all(bool((o == outputs[0]).all()) for o in outputs)
    torch.set_num_threads(threads)
    return float(np.median(walls)), float(np.median(cpus)), outputs[0]


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
    only = set(spec.get("only") or ())

    def want(name: str) -> bool:
        return not only or name in only

    if want("bf16_autocast"):
        with precision_context("bf16", cpu):
            record("bf16_autocast", _forward(net, x, reps), "the --fast precision")
    if want("fp32_1_thread"):
        torch.set_num_threads(1)
        record("fp32_1_thread", _forward(net, x, reps), "CPU seconds per patch with 1 thread")
        torch.set_num_threads(spec["threads"])
    if want("fp32_2_workers_1_thread"):
        record(
            "fp32_2_workers_1_thread",
            _two_workers(net, x, reps, spec["threads"]),
            "two forwards at once, one thread each (two network workers) against two in turn "
            "with all threads: wall and CPU seconds per forward",
        )
    if want("fp32_onednn_off"):
        with torch.backends.mkldnn.flags(enabled=False):
            record("fp32_onednn_off", _forward(net, x, reps))
    if want("fp32_channels_last_3d") or want("bf16_channels_last_3d"):
        net_cl = net.to(memory_format=torch.channels_last_3d)
        x_cl = x.to(memory_format=torch.channels_last_3d)
        record("fp32_channels_last_3d", _forward(net_cl, x_cl, reps))
        with precision_context("bf16", cpu):
            record("bf16_channels_last_3d", _forward(net_cl, x_cl, reps), "against fp32")
        net = net.to(memory_format=torch.contiguous_format)
    if spec["compile"]:
        t0 = time.perf_counter()
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(x)
        compile_s = time.perf_counter() - t0
        note = f"first call (compilation) took {compile_s:.0f} s"
        record("fp32_torch_compile", _forward(compiled, x, reps), note)
        rows["fp32_torch_compile"]["compile_s"] = compile_s
    result = {"patch_nnunet_order": patch, "threads": spec["threads"], "levers": rows}
    if spec.get("shapes"):
        result["patch_shapes"] = patch_shapes(net, model.num_input_channels, list(full))
    return result


def patch_shapes(net, channels: int, full: list[int]) -> list[dict]:
    """Wall and CPU seconds of the first and the second forward of each patch shape the
    official-size images use (full; fitted to a cervical image's step 1 and step 2; fitted
    to a whole spine's step-2 crop), in float32 and bfloat16: does a fitted patch cost its
    share of voxels, and what does a shape's first call (oneDNN building its kernels) add?"""
    import torch

    from bids_app.nnunet.model import precision_context

    shapes = [full, [192, 192, 80], [192, 128, 80], [256, 160, 80]]
    out = []
    for precision in ("fp32", "bf16"):
        for shape in shapes if precision == "bf16" else shapes[:2]:
            x = torch.randn(1, channels, *shape)
            calls = []
            with torch.inference_mode(), precision_context(precision, torch.device("cpu")):
                for _ in range(2):
                    t0, c0 = time.perf_counter(), time.process_time()
                    net(x)
                    calls.append([time.perf_counter() - t0, time.process_time() - c0])
            out.append(
                {
                    "precision": precision,
                    "shape": shape,
                    "voxels_over_full": float(np.prod(shape) / np.prod(full)),
                    "first_s": calls[0][0],
                    "first_cpu_s": calls[0][1],
                    "second_s": calls[1][0],
                    "second_cpu_s": calls[1][1],
                    "loadavg": os.getloadavg()[0],
                }
            )
            print(
                f"    {precision} {shape}: {calls[0][0]:.1f} s, then {calls[1][0]:.1f} s",
                flush=True,
            )
    return out


def run_child(kind: str, spec: dict, timeout: float | None = None) -> dict:
    """The child's JSON result; {"timed_out_s": timeout} if it ran longer (killed)."""
    cmd = [sys.executable, "-m", "benchmarks.fast", f"--child-{kind}", json.dumps(spec)]
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"timed_out_s": timeout}
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
    "cervical:bf16_fit",
    "whole:0.75,bf16",
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
        r["patches"] = {step: v["count"] for step, v in r["network_inputs"].items()}
        # Patch-equivalents: voxels the networks computed, in official patches.
        r["patch_equivalents"] = sum(
            v["count"] * float(np.prod(v["shape"])) / float(np.prod(patch))
            for v in r["network_inputs"].values()
        )
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
    its CPU seconds without the demo networks' (the stand-ins' networks replace them; their
    nnU-Net preprocessing and resampling count with the stand-ins)."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights("demo"), device="cpu", threads=threads)
    networks_cpu = [0.0]
    predict = engine.networks.predict

    def counted(*args, **kwargs):
        c0 = time.process_time()
        try:
            return predict(*args, **kwargs)
        finally:
            networks_cpu[0] += time.process_time() - c0

    engine.networks.predict = counted  # type: ignore[method-assign]
    rest, cpu = {}, {}
    for name, path in images.items():
        img = nib.load(path)
        c0, networks_cpu[0] = time.process_time(), 0.0
        res = engine.segment(img, SegmentOptions(assume_top_disc=63), name=name)
        cpu[name] = time.process_time() - c0 - networks_cpu[0]
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
        modes = dict.fromkeys(r["mode"] for r in runs)
        mine = {m: [r for r in runs if r["case"] == case and r["mode"] == m] for m in modes}
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
        if "default" in wall:
            row["over_default"] = {
                m: {
                    "wall": wall[m] / wall["default"],
                    "cpu": cpu[m] / cpu["default"] if m in cpu and "default" in cpu else None,
                    "peak_rss": peak[m] / peak["default"],
                }
                for m in wall
                if m != "default"
            }
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


# Images shorter than the demo patch (80 voxels = 160 mm head-feet at 2 mm) are the only
# ones on which the fast window's patch fit acts with the demo models: a cervical image cut
# to its top SHORT_MM exercises it (the official patch is larger than a whole cervical image).
SHORT_MM = 120


def held_out_images(seeds: int, short: bool) -> list[tuple[str, int, str]]:
    """(field of view, seed, contrast) of the held-out phantoms: every field of view per
    seed (5000+, never trained on), contrasts alternating by seed; `short` adds the cut
    cervical image (`SHORT_MM`) per seed."""
    fovs = [*FOVS, "cervical_short"] if short else list(FOVS)
    return [
        (fov, seed, ("T2w", "T1w")[seed % 2]) for seed in range(5000, 5000 + seeds) for fov in fovs
    ]


def render_held_out(fov: str, seed: int, contrast: str) -> nib.Nifti1Image:
    """The phantom image; `cervical_short` keeps the top SHORT_MM of a cervical one."""
    ph = render_phantom(seed, Acquisition(fov=fov.removesuffix("_short"), contrast=contrast))
    if not fov.endswith("_short"):
        return ph.image
    img = nib.as_closest_canonical(ph.image)
    keep = round(SHORT_MM / float(img.header.get_zooms()[2]))
    return img.slicer[:, :, -keep:]


def demo_agreement(
    seeds: int,
    threads: int,
    candidates: dict[str, SegmentOptions],
    save: Callable[[dict], None],
    short: bool = True,
) -> dict:
    """Default vs each candidate with the demo models, image by image (the default computed
    once per image); `save` gets the summaries after each image (a long run stopped early
    keeps what it measured)."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    weights = resolve_weights("demo")
    engine = SpineSegEngine(weights, device="cpu", threads=threads)
    rows: dict[str, list[dict]] = {name: [] for name in candidates}

    # Which demo models these are (they are retrained from time to time).
    digests = {
        str(path.relative_to(weights.root)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in sorted(Path(weights.root).rglob("*.pth"))
    }

    def summaries() -> dict:
        out = {n: agreement_summary(rows[n], candidates[n]) for n in candidates}
        return {"weights": str(weights.root), "checkpoints_sha256": digests, "candidates": out}

    for fov, seed, contrast in held_out_images(seeds, short):
        image = render_held_out(fov, seed, contrast)
        t0 = time.perf_counter()
        ref = engine.segment(image, SegmentOptions(), name=f"{fov} {seed}")
        ref_s = time.perf_counter() - t0
        for name, options in candidates.items():
            t0 = time.perf_counter()
            res = engine.segment(image, options, name=f"{fov} {seed}")
            secs = {"default": ref_s, "fast": time.perf_counter() - t0}
            row = {"fov": fov, "seed": seed, "contrast": contrast, "seconds": secs}
            row.update(compare_results(ref, res))
            row["errors"] = {"default": ref.errors, "fast": res.errors}
            rows[name].append(row)
            print(
                f"  demo {name} {fov} {seed} {contrast}: min Dice "
                f"{row.get('min_dice', float('nan')):.3f}, levels identical "
                f"{row['levels_identical']}, {secs['default']:.1f} / {secs['fast']:.1f} s",
                flush=True,
            )
        save(summaries())
    return summaries()


def agreement_summary(rows: list[dict], fast: SegmentOptions) -> dict:
    """Pooled per-label Dice and the share of images whose level labels are identical."""
    pooled: dict[str, list[int]] = {}
    for row in rows:
        if row["fov"].endswith("_short"):
            continue
        for name, (both, na, nb) in row.get("overlap", {}).items():
            acc = pooled.setdefault(name, [0, 0, 0])
            acc[0] += both
            acc[1] += na
            acc[2] += nb
    pooled_dice = {n: 2 * b / (na + nb) if na + nb else 1.0 for n, (b, na, nb) in pooled.items()}
    # The targets are over the fields of view a user images; the cut cervical images only
    # probe the patch fit and are summarised on their own.
    main = [r for r in rows if not r["fov"].endswith("_short")]
    identical = float(np.mean([r["levels_identical"] for r in main])) if main else float("nan")
    worst = min(pooled_dice, key=pooled_dice.__getitem__, default=None)
    image_mins = [r.get("min_dice", 0.0) for r in main]
    return {
        "fast_options": fast.record(),
        "images": len(main),
        "levels_identical": [sum(r["levels_identical"] for r in main), len(main)],
        "image_min_dice_min_median": [
            min(image_mins, default=float("nan")),
            float(np.median(image_mins)) if image_mins else None,
        ],
        "short_images_levels_identical": [
            sum(r["levels_identical"] for r in rows if r["fov"].endswith("_short")),
            sum(r["fov"].endswith("_short") for r in rows),
        ],
        "rows": rows,
        "pooled_dice_per_label": pooled_dice,
        "lowest_pooled_dice": [worst, pooled_dice[worst]] if worst else None,
        "labels_below_target": sorted(n for n, d in pooled_dice.items() if d < DICE_TARGET),
        "share_images_levels_identical": identical,
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
            for mode in dict.fromkeys(r["mode"] for r in off["runs"]):
                runs = [r for r in off["runs"] if r["case"] == case and r["mode"] == mode]
                if not runs:
                    continue
                p, full = runs[0]["patches"], runs[0].get("patch_equivalents")
                if full is not None and abs(full - p["step1"] - p["step2"]) > 0.01:
                    p = {**p, "step2": f"{p['step2']} ({full:.2f} full patches)"}
                cpu, wall = row["image_cpu_s"], row["image_s"]
                ratios = " | "
                if mode != "default" and "default" in cpu and mode in cpu:
                    ratios = (
                        f"**{cpu[mode] / cpu['default']:.2f}** "
                        f"| **{wall[mode] / wall['default']:.2f}**"
                    )
                lines.append(
                    f"| {case} | {mode_label(mode)} | {p['step1']} + {p['step2']} "
                    f"| {cpu.get(mode, float('nan')):.0f} | {wall[mode]:.0f} "
                    f"| {row['peak_rss_mib'][mode] / 1024:.1f} GiB | {ratios} |"
                )
        lines.append("")
    demo = report.get("demo_agreement") or {}
    for summary in demo.get("candidates", {}).values():
        lines += agreement_lines(summary)
    levers = report.get("levers")
    if levers:
        lines += [
            f"Other levers, one forward of the step-1 stand-in on a "
            f"{'x'.join(map(str, levers['patch_nnunet_order']))} input (CPU seconds, all "
            "threads):",
            "",
            "| lever | wall s | CPU s | speed-up, wall | speed-up, CPU | output identical to "
            "float32 | >= 1.1x and identical | adopted |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = list(levers["levers"].items())
        again = levers.get("threads_repeat", {}).get("levers", {})
        rows += [(f"{n} (again, idle machine)", r) for n, r in again.items()]
        for name, r in rows:
            wall_up = r.get("speedup_wall", 1.0)
            bar = min(wall_up, r["speedup_cpu"]) >= 1.1 and r["identical"]
            adopt = {"fp32": "the default", "bf16_autocast": "in --fast"}.get(
                name.split(" ")[0], "no"
            )
            lines.append(
                f"| {name.replace('_', ' ')} | {r['seconds']:.1f} | {r['cpu_s']:.1f} "
                f"| {wall_up:.2f}x | {r['speedup_cpu']:.2f}x "
                f"| {'yes' if r['identical'] else 'no'} | {'yes' if bar else 'no'} | {adopt} |"
            )
        lines.append("")
        shapes = levers.get("patch_shapes")
        if shapes:
            lines += [
                "Patch shapes of the official-size images, one forward each (first call, then "
                "second), through the step-1 stand-in:",
                "",
                "| precision | patch (nnU-Net order) | voxels / full patch | first call, wall s "
                "(CPU s) | second call, wall s (CPU s) |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['precision']} | {'x'.join(map(str, r['shape']))} "
                f"| {r['voxels_over_full']:.2f} | {r['first_s']:.1f} ({r['first_cpu_s']:.1f}) "
                f"| {r['second_s']:.1f} ({r['second_cpu_s']:.1f}) |"
                for r in shapes
            ]
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
        f"Agreement with the default, demo models, {demo['images']} held-out phantoms (T2w "
        f"and T1w), tile step {o['tile_step']} and precision {o.get('precision', 'auto')}:",
        "",
        "| field of view | images | lowest per-label Dice of an image (median over images) "
        "| level labels identical |",
        "|---|---|---|---|",
    ]
    for fov, rows in by_fov.items():
        mins = [r.get("min_dice", 0.0) for r in rows]
        levels = f"{sum(r['levels_identical'] for r in rows)} / {len(rows)}"
        if fov.endswith("_short"):
            fits = "the patch cut acts" if o["tile_step"] != 0.5 else "no patch cut at 0.5"
            fov = f"{fov} (top {SHORT_MM} mm: {fits}; not in the targets)"
            # Without a landmark disc neither mode numbers the levels: step-1 labels compared.
            numbered = [r for r in rows if r["both_final"]]
            levels = f"{sum(r['levels_identical'] for r in numbered)} / {len(numbered)}"
            if len(numbered) < len(rows):
                levels += f" ({len(rows) - len(numbered)} without levels in either mode)"
        lines.append(
            f"| {fov} | {len(rows)} | {min(mins):.3f} ({float(np.median(mins)):.3f}) | {levels} |"
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
    ap.add_argument(
        "--candidates",
        nargs="+",
        default=[
            f"fast={FAST_TILE_STEP},{FAST_PRECISION}",
            "tile_075=0.75,bf16",
        ],
        help="NAME=TILE_STEP,PRECISION fast variants compared with the default",
    )
    ap.add_argument("--no-short", action="store_true", help="without the cut cervical images")
    ap.add_argument("--skip-levers", action="store_true")
    ap.add_argument("--shapes", action="store_true", help="also time each patch shape")
    ap.add_argument("--child-timeout", type=float, help="seconds the levers child may run")
    ap.add_argument("--levers", nargs="+", help="only these levers (names as in fast.json)")
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
        candidates = {}
        for item in args.candidates:
            name, _, values = item.partition("=")
            step, precision = values.split(",")
            candidates[name] = SegmentOptions(tile_step=float(step), precision=precision)

        def keep(summary: dict) -> None:
            report["demo_agreement"] = summary
            save()

        report.pop("demo_agreement_bf16_only", None)  # now a candidate among others
        keep(demo_agreement(args.seeds, args.threads, candidates, keep, not args.no_short))
    if not args.skip_levers:
        spec = {
            "weights": str(standin_weights(work)[0]),
            "threads": args.threads,
            "reps": args.reps,
            "compile": args.compile,
            "quarter": not args.full_patch_levers,
            "shapes": args.shapes,
            "only": args.levers,
        }
        print("levers on one official-size patch ...", flush=True)
        report["levers"] = run_child("levers", spec, args.child_timeout)
        report["levers"]["loadavg"] = list(os.getloadavg())
        save()
    report["loadavg_end"] = list(os.getloadavg())
    report["peak_rss_this_process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
