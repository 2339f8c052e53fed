"""What the official-size networks cost: same-size stand-ins with RANDOM weights (issue 17).

    python -m benchmarks.realsize [--quick] [--work DIR] [--max-minutes 8] [--threads N]

We cannot download TotalSpineSeg's weights here, so this script builds networks of the same
architecture and size and measures their cost. It
1. renders 1 mm whole-spine phantoms, lays them out as nnU-Net raw datasets 101 (1 channel,
   the step-1 regions) and 102 (2 channels, the step-2 regions), and runs nnU-Net 2.8.1's
   fingerprint extraction and `nnUNetPlannerResEncL` on them (plans name `nnUNetPlans`, as
   TotalSpineSeg's training script writes them, docs/method.md §1.5);
2. writes a weights folder in the official layout whose checkpoints hold RANDOMLY
   INITIALISED networks built from those plans. Their outputs are meaningless: only time and
   memory are measured. Everything is generated under the work folder; nothing is committed;
3. per image size (cervical, whole spine, a long 0.5x0.5x3 mm sagittal image) and tile step,
   measures in a fresh child process: model load, step-1 and step-2 network time (step 1 on
   the whole 1 mm grid with probabilities, step 2 on the crop the truth labels +- 10 voxels
   give, which is what a trained step 1 would give), peak RSS. When the predicted network
   time exceeds --max-minutes the child runs the full nnU-Net path with the network replaced
   by a zero-output stand-in (real arrays, real sliding window and export) plus one real
   patch forward, and the result is EXTRAPOLATED: time = that path + patches x time per patch,
   peak RSS = its peak + the one patch's extra memory. Which rows are extrapolated is said
   in the JSON and docs/expect.md; the per-patch time used and a check of the extrapolation
   against a measured image are written next to them;
4. "the rest of the pipeline" (preprocess, labeling, back to the input grid) does not depend
   on the network's size; it is measured on the same images through `SpineSegEngine` with the
   demo models, whose outputs are realistic (random outputs would make labeling stop early);
5. the fast mode (--tile-step) with the demo models on held-out phantoms: time and agreement
   with the default mode (voxel agreement of final labels, Dice per label, levels identical).

Writes `benchmarks/out/realsize.json` and the table between the `realsize` markers of
docs/expect.md. `--quick` is a smoke run (cervical only, small planning set) that writes
`<work>/realsize.json` and leaves docs/expect.md alone. No GPU here: GPU memory is recorded as null.
Not a test; on a shared machine read times as upper bounds (the load average is recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.engine import geometry as geo
from bids_app.engine.memory import estimate_peak_bytes
from bids_app.engine.options import SegmentOptions
from bids_app.labeling import bbox_slices, extract_alternate
from bids_app.phantom import render as phantom_render
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bids_app" / "demo_models"
DATASETS = {"step1": "Dataset101_TotalSpineSeg_step1", "step2": "Dataset102_TotalSpineSeg_step2"}
TRAINER_DIR = "nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres"
CROP_MARGIN = 10  # the engine's step-2 crop (docs/method.md §2.7)
TOP_DISC = 63  # C2-C3: the phantoms start at C1 (see the README's demo-model section)
MIB = 2**20

# A long whole-spine sagittal acquisition: 0.5 x 0.5 mm in plane, 3 mm slices, with a field of
# view of 800 mm (SI) x 320 mm (AP) x 120 mm (LR), the size of a composed whole-spine series.
LONG_VOXEL = "sag05"
LONG_ZOOMS = (3.0, 0.5, 0.5)  # along R, A, S
LONG_FOV_MM = (120.0, 320.0, 800.0)


# --------------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss(every_s: float = 0.02) -> Iterator[dict]:
    """Sample RSS in a thread while the block runs; `out['peak']` is the highest sample."""
    out = {"before": rss_bytes(), "peak": rss_bytes()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            out["peak"] = max(out["peak"], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out["peak"] = max(out["peak"], rss_bytes())
        out["seconds"] = time.perf_counter() - t0


def machine() -> dict:
    """The conditions: CPU model, cores this process may use, memory, load, versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    import torch

    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores_host": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "gpu": None,
        "gpu_note": "no GPU was lent to this session: GPU memory and GPU times not measured",
        "torch": torch.__version__,
        "nnunetv2": version("nnunetv2"),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- images
def long_sagittal(seed: int) -> phantom_render.Phantom:
    """A whole-spine phantom at 0.5 x 0.5 x 3 mm, embedded in an 800 x 320 mm noise field.

    The renderer's field of view hugs the spine; a real long sagittal series also covers air
    and body around it. The padding is filled with the image's own background noise (not
    zeros), so nnU-Net's crop to non-zero does not remove it, as on a real scan.
    """
    phantom_render.VOXEL_SIZES.setdefault(LONG_VOXEL, LONG_ZOOMS)
    acq = Acquisition(fov="whole", voxel=LONG_VOXEL, lr_extent=LONG_FOV_MM[0])
    ph = render_phantom(seed, acq)
    data = np.asarray(ph.image.dataobj)
    labels = np.asarray(ph.labels.dataobj)
    target = [
        max(n, round(fov / z))
        for n, fov, z in zip(data.shape, LONG_FOV_MM, LONG_ZOOMS, strict=True)
    ]
    before = [(t - n) // 2 for t, n in zip(target, data.shape, strict=True)]
    pad = [(b, t - n - b) for b, t, n in zip(before, target, data.shape, strict=True)]
    rng = np.random.default_rng(seed)
    background = data[labels == 0]
    background = background[background < np.percentile(background, 50)]
    big = rng.choice(background, size=target).astype(data.dtype)
    inner = tuple(slice(b, b + n) for b, n in zip(before, data.shape, strict=True))
    big[inner] = data
    affine = ph.image.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array(before, float)
    image = nib.Nifti1Image(big, affine, ph.image.header)
    truth = nib.Nifti1Image(np.pad(labels, pad), affine, ph.labels.header)
    return phantom_render.Phantom(image, truth, ph.anatomy, acq, ph.meta)


def cases(quick: bool) -> dict[str, tuple[str, Callable[[], phantom_render.Phantom]]]:
    """Image name -> (description, maker). Seeds 5000+ were never used to train demo models."""
    out = {
        "cervical": (
            "cervical phantom, 1 mm",
            lambda: render_phantom(5000, Acquisition(fov="cervical")),
        )
    }
    if not quick:
        out["whole"] = ("whole-spine phantom, 1 mm", lambda: render_phantom(5001))
        out["long"] = (
            "long sagittal 0.5x0.5x3 mm, 800x320x120 mm field of view",
            lambda: long_sagittal(5002),
        )
    return out


# --------------------------------------------------------------------------- stand-in weights
def plan_standins(work: Path, n_phantoms: int, fov: str) -> dict[str, dict]:
    """Run nnU-Net's fingerprint + ResEnc-L planner on phantoms; returns the two plans."""
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    os.environ.update(
        nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(work / "res")
    )
    phantoms = [render_phantom(9000 + k, Acquisition(fov=fov)) for k in range(n_phantoms)]
    for step, name in DATASETS.items():
        ds = raw / name
        (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
        (ds / "labelsTr").mkdir(exist_ok=True)
        dataset_json = json.loads(next((DEMO / name).glob("*/dataset.json")).read_text())
        dataset_json.update(numTraining=n_phantoms, file_ending=".nii.gz")
        (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        for k, ph in enumerate(phantoms):
            truth = np.asarray(ph.labels.dataobj)
            affine = ph.image.affine
            nib.save(ph.image, ds / "imagesTr" / f"ph_{k:03d}_0000.nii.gz")
            if step == "step2":
                alternate = nib.Nifti1Image(extract_alternate(truth), affine)
                nib.save(alternate, ds / "imagesTr" / f"ph_{k:03d}_0001.nii.gz")
            # Only the foreground matters to the planner (intensity statistics).
            fg = nib.Nifti1Image((truth > 0).astype(np.uint8), affine)
            nib.save(fg, ds / "labelsTr" / f"ph_{k:03d}.nii.gz")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )

    ids = [101, 102]
    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprints(ids, num_processes=1, check_dataset_integrity=False, clean=True)
        plan_experiments(ids, "nnUNetPlannerResEncL", overwrite_plans_name="nnUNetPlans")
    return {
        step: json.loads((pre / name / "nnUNetPlans.json").read_text())
        for step, name in DATASETS.items()
    }


def write_standin_weights(work: Path, plans: dict[str, dict]) -> tuple[Path, dict]:
    """Official-layout folder with RANDOM networks built from the plans; returns it + facts."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    root = work / "standin_weights"
    facts = {}
    for k, (step, name) in enumerate(DATASETS.items()):
        trainer = root / name / TRAINER_DIR
        (trainer / "fold_0").mkdir(parents=True, exist_ok=True)
        dataset_json = json.loads(next((DEMO / name).glob("*/dataset.json")).read_text())
        (trainer / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        (trainer / "plans.json").write_text(json.dumps(plans[step], indent=2))
        config = plans[step]["configurations"]["3d_fullres"]
        arch = config["architecture"]
        n_in = len(dataset_json["channel_names"])
        n_out = len(dataset_json["labels"]) - 1  # one sigmoid head per region
        torch.manual_seed(17 + k)
        net = get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            n_in,
            n_out,
            allow_init=True,
            deep_supervision=False,
        )
        ckpt = {
            "network_weights": net.state_dict(),
            "init_args": {"configuration": "3d_fullres"},
            "trainer_name": "nnUNetTrainerDAExtGPU",
            "inference_allowed_mirroring_axes": None,  # TotalSpineSeg's: no mirroring (§1.5)
            "note": "RANDOM WEIGHTS: benchmarks/realsize.py stand-in, outputs are meaningless",
        }
        path = trainer / "fold_0" / "checkpoint_final.pth"
        torch.save(ckpt, path)
        kw = arch["arch_kwargs"]
        facts[step] = {
            "dataset": name,
            "input_channels": n_in,
            "region_heads": n_out,
            "architecture": arch["network_class_name"].rsplit(".", 1)[-1],
            "patch_size_nnunet_order": config["patch_size"],
            "patch_size_nibabel_order": config["patch_size"][::-1],
            "batch_size_in_training": config["batch_size"],
            "spacing": config["spacing"],
            "n_stages": kw["n_stages"],
            "features_per_stage": kw["features_per_stage"],
            "n_blocks_per_stage": kw.get("n_blocks_per_stage"),
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "checkpoint_mib": round(path.stat().st_size / MIB, 1),
        }
    return root, facts


# --------------------------------------------------------------------------- child process
class _ZeroNet:
    """Stands in for the network: zero logits of the right shape, no computation.

    Lets nnU-Net's real preprocessing, sliding window (every patch sliced and accumulated)
    and export run at full size, so their time and memory are measured exactly.
    """

    def __init__(self, heads: int):
        self.heads = heads

    def __call__(self, x):
        import torch

        return torch.zeros((x.shape[0], self.heads, *x.shape[2:]), dtype=x.dtype)

    def load_state_dict(self, *_args, **_kwargs) -> None:
        pass

    def to(self, *_args, **_kwargs) -> _ZeroNet:
        return self

    def eval(self) -> _ZeroNet:
        return self


def patches(shape_nibabel: tuple[int, ...], patch_nibabel: list[int], step: float) -> int:
    """Sliding-window patches nnU-Net runs on this grid (after padding up to the patch)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    size = [max(n, p) for n, p in zip(shape_nibabel, patch_nibabel, strict=True)]
    steps = compute_steps_for_sliding_window(size, patch_nibabel, step)
    return int(np.prod([len(s) for s in steps]))


def on_model_grid(image_path: str | Path, truth_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm image as the engine gives it to step 1, and the channels of step 2's crop.

    The crop is the truth labels +- 10 voxels, i.e. what a trained step 1 would give.
    """
    image, truth = nib.load(image_path), nib.load(truth_path)
    iso = geo.resample_to_iso(geo.to_canonical(image))
    data = np.asanyarray(iso.dataobj)
    truth_iso = geo.labels_onto(np.asarray(truth.dataobj), truth.affine, iso)
    box = bbox_slices(truth_iso, CROP_MARGIN)
    channels2 = np.stack(
        [data[box].astype(np.float32), extract_alternate(truth_iso[box]).astype(np.float32)]
    )
    return data, channels2


def child(spec: dict) -> dict:
    """One image, one tile step, both stand-in models, in this fresh process."""
    import torch

    from bids_app.nnunet.model import NnUNetModel

    torch.manual_seed(0)
    out: dict = {"mode": spec["mode"]}
    models, load_s = {}, {}
    for step, name in DATASETS.items():
        t0 = time.perf_counter()
        models[step] = NnUNetModel.load(
            Path(spec["weights"]) / name, torch.device("cpu"), threads=spec["threads"]
        )
        load_s[step] = time.perf_counter() - t0
    out["model_load_s"] = load_s
    out["rss_after_load_mib"] = rss_bytes() / MIB
    data, channels2 = on_model_grid(spec["image"], spec["truth"])
    out["rss_before_predict_mib"] = rss_bytes() / MIB  # models + this image's inputs
    out["grid_1mm"] = list(data.shape)
    out["step2_crop"] = list(channels2.shape[1:])
    step = spec["tile_step"]

    def run_both(tag: str) -> None:
        with peak_rss() as m1:
            models["step1"].predict(data[None], return_probabilities=True, tile_step=step)
        with peak_rss() as m2:
            models["step2"].predict(channels2, tile_step=step)
        out[tag] = {
            "step1_s": m1["seconds"],
            "step2_s": m2["seconds"],
            "step1_peak_rss_mib": m1["peak"] / MIB,
            "step2_peak_rss_mib": m2["peak"] / MIB,
        }

    # nnU-Net's path with zero-output networks: everything but the network arithmetic.
    real = {k: m._predictor.network for k, m in models.items()}
    for m in models.values():
        m._predictor.network = _ZeroNet(m.num_outputs)
    run_both("without_network")
    for k, m in models.items():
        m._predictor.network = real[k]
    if spec["mode"] == "measured":
        run_both("measured")
    else:  # one real patch forward per model gives the time and memory of a patch in flight
        out["one_patch"] = {}
        for k, m in models.items():
            net = m._predictor.network
            patch = m._predictor.configuration_manager.patch_size
            x = torch.randn(1, m.num_input_channels, *patch)
            with peak_rss() as p, torch.inference_mode():
                net(x)
            out["one_patch"][k] = {
                "seconds": p["seconds"],
                "extra_mib": (p["peak"] - p["before"]) / MIB,
            }
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(spec: dict) -> dict:
    """Run `child(spec)` in a fresh interpreter, so each peak RSS is that image's alone."""
    cmd = [sys.executable, "-m", "benchmarks.realsize", "--child", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed for {spec['case']}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- demo models
def rest_of_pipeline(images: dict[str, Path], threads: int) -> dict[str, dict]:
    """Engine stage times with the demo models: everything but the two networks."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights("demo"), device="cpu", threads=threads)
    out = {}
    for name, path in images.items():
        res = engine.segment(nib.load(path), SegmentOptions(assume_top_disc=TOP_DISC), name=name)
        rest = {k: v for k, v in res.timings.items() if not k.endswith("_network")}
        out[name] = {"stages_s": rest, "rest_s": sum(rest.values()), "errors": res.errors}
        print(f"  rest of pipeline, {name}: {out[name]['rest_s']:.1f} s {res.errors}", flush=True)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def renamed(reference: np.ndarray, other: np.ndarray) -> dict[str, str]:
    """Structures of `reference` that `other` mostly labels as something else (a level shift)."""
    out = {}
    for v in np.unique(reference):
        if v == 0:
            continue
        got = other[reference == v]
        majority = int(np.bincount(got).argmax())
        if majority != v:
            out[L.level_name(int(v))] = L.level_name(majority) if majority else "background"
    return out


def fast_mode_with_demo(seeds: list[int], fov: str, steps: list[float], threads: int) -> dict:
    """Default vs fast tile steps with the demo models: time and agreement with the default."""
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights("demo"), device="cpu", threads=threads)
    rows = []
    for seed in seeds:
        ph = render_phantom(seed, Acquisition(fov=fov))
        results = {}
        for step in [0.5, *steps]:
            t0 = time.perf_counter()
            res = engine.segment(
                ph.image, SegmentOptions(assume_top_disc=TOP_DISC, tile_step=step), name=str(seed)
            )
            results[step] = (res, time.perf_counter() - t0)
        ref, ref_s = results[0.5]
        ref_final = np.asarray(ref.native["final"].dataobj)
        for step in steps:
            res, seconds = results[step]
            final = np.asarray(res.native["final"].dataobj) if "final" in res.native else None
            row = {
                "seed": seed,
                "tile_step": step,
                "seconds": seconds,
                "seconds_default": ref_s,
                "network_s": res.timings.get("step1_network", 0)
                + res.timings.get("step2_network", 0),
                "network_s_default": ref.timings["step1_network"] + ref.timings["step2_network"],
                "errors": res.errors,
            }
            if final is not None:
                labels = sorted(set(np.unique(ref_final)) | set(np.unique(final)) - {0})
                row["voxel_agreement"] = float((final == ref_final).mean())
                row["voxels_differing"] = int((final != ref_final).sum())
                row["dice_per_label"] = {
                    L.level_name(int(v)): dice(final == v, ref_final == v) for v in labels if v
                }
                row["min_dice"] = min(row["dice_per_label"].values())
                row["mean_dice"] = float(np.mean(list(row["dice_per_label"].values())))
                row["same_labels_present"] = set(np.unique(final)) == set(np.unique(ref_final))
            levels = np.asarray(res.native["levels"].dataobj) if "levels" in res.native else None
            ref_levels = (
                np.asarray(ref.native["levels"].dataobj) if "levels" in ref.native else None
            )
            row["landmarks"], row["landmarks_default"] = res.landmarks, ref.landmarks
            row["levels_identical"] = (
                levels is not None and ref_levels is not None and np.array_equal(levels, ref_levels)
            ) and res.landmarks == ref.landmarks
            if levels is not None and ref_levels is not None:
                row["level_markers"] = sorted(int(v) for v in np.unique(levels) if v)
                row["level_markers_default"] = sorted(int(v) for v in np.unique(ref_levels) if v)
                shifts = {
                    int(v): float(
                        np.linalg.norm(
                            np.argwhere(levels == v).mean(0) - np.argwhere(ref_levels == v).mean(0)
                        )
                    )
                    for v in set(row["level_markers"]) & set(row["level_markers_default"])
                }
                row["level_marker_shift_vox"] = shifts
                row["level_marker_max_shift_vox"] = max(shifts.values(), default=0.0)
            if final is not None:
                row["renamed_structures"] = renamed(ref_final, final)
            rows.append(row)
            print(
                f"  demo fast mode, seed {seed}, step {step}: {seconds:.1f} s (default "
                f"{ref_s:.1f} s), agreement {row.get('voxel_agreement', float('nan')):.5f}, "
                f"min Dice {row.get('min_dice', float('nan')):.3f}, levels identical "
                f"{row['levels_identical']}",
                flush=True,
            )
    return {"fov": fov, "seeds": seeds, "assume_top_disc": "C2-C3", "rows": rows}


# --------------------------------------------------------------------------- report
def summarise(case: dict, run: dict, per_patch: dict[str, float]) -> dict:
    """Network time, peak RSS and where each number comes from."""
    base = run["without_network"]
    if run["mode"] == "measured":
        net = {k: run["measured"][f"{k}_s"] for k in ("step1", "step2")}
        peak = run["ru_maxrss_mib"]
    else:
        net = {k: base[f"{k}_s"] + case["patches"][k] * per_patch[k] for k in ("step1", "step2")}
        extra = max(p["extra_mib"] for p in run["one_patch"].values())
        peak = max(base["step1_peak_rss_mib"], base["step2_peak_rss_mib"]) + extra
    return {"network_s": net, "peak_rss_mib": peak}


def update_readme(report: dict) -> None:
    readme = ROOT / "docs" / "expect.md"
    start, end = "<!-- realsize:start -->", "<!-- realsize:end -->"
    text = readme.read_text()
    if start not in text:
        return
    s1, s2 = report["standins"]["step1"], report["standins"]["step2"]
    lines = [
        f"Stand-ins: `{s1['architecture']}`, {s1['n_stages']} stages, features "
        f"{'-'.join(map(str, s1['features_per_stage']))}, patch "
        f"{'x'.join(map(str, s1['patch_size_nibabel_order']))} (LR x AP x SI), "
        f"{s1['parameters'] / 1e6:.1f} M parameters (step 1) and {s2['parameters'] / 1e6:.1f} M "
        f"(step 2), checkpoints {s1['checkpoint_mib']:.0f} + {s2['checkpoint_mib']:.0f} MiB. "
        "Random weights: cost only.",
        "",
        "| image | 1 mm grid | tile step | patches step 1 + 2 | model load | step 1 | step 2 "
        "| rest of pipeline | total | peak RSS | GPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        star = "" if row["mode"] == "measured" else " *"
        total = row["load_s"] + sum(row["network_s"].values()) + row["rest_s"]
        lines.append(
            f"| {row['description']} | {'x'.join(map(str, row['grid_1mm']))} | {row['tile_step']} "
            f"| {row['patches']['step1']} + {row['patches']['step2']} | {row['load_s']:.1f} s "
            f"| {row['network_s']['step1']:.0f} s{star} | {row['network_s']['step2']:.0f} s{star} "
            f"| {row['rest_s']:.0f} s | **{total / 60:.1f} min**{star} "
            f"| {row['peak_rss_mib'] / 1024:.1f} GiB{star} | not measured |"
        )
    m, check = report["machine"], report.get("extrapolation_check")
    lines += [
        "",
        f"_{report['when']}; {m['cpu']}, {m['cores_usable']} cores (shared; load average "
        f"{report['loadavg_start'][0]:.1f} at start, {report['loadavg_end'][0]:.1f} at end), "
        f"torch {m['torch']} fp32, nnU-Net {m['nnunetv2']}, no test-time mirroring (as "
        "TotalSpineSeg), one fold; no GPU was lent, so no GPU memory. "
        "`python -m benchmarks.realsize`._",
        "",
        "\\* extrapolated, not measured end to end: nnU-Net's full path with a zero-output "
        "network (real arrays, every patch sliced and accumulated) plus patches x "
        f"{report['per_patch_s']['step1']:.1f} s (step 1) / {report['per_patch_s']['step2']:.1f} s "
        f"(step 2) per patch, measured on the {report['per_patch_s']['from']['step1']} (the "
        "measured image with the most patches); memory = that path's peak + one patch's "
        "activations.",
    ]
    if check:
        lines.append(
            "Check of the extrapolation on the measured images (networks, predicted / measured): "
            + "; ".join(
                f"{c['case']} {c['tile_step']}: {c['predicted_s']:.0f} / {c['measured_s']:.0f} s"
                for c in check
            )
            + ". Times vary with the load of the shared machine."
        )
    fast = report.get("demo_fast_mode")
    if fast:
        lines += [
            "",
            "Fast mode with the demo models (held-out whole-spine phantoms, compared with the "
            "default tile step 0.5 of the same models):",
            "",
            "| tile step | networks s (default) | whole image s (default) | voxels agreeing "
            "| lowest Dice of a label | same landmarks and levels named "
            "| level markers moved by (voxels) | structures renamed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in fast["rows"]:
            renames = r.get("renamed_structures", {})
            same = r["landmarks"] == r["landmarks_default"] and r.get("level_markers") == r.get(
                "level_markers_default"
            )
            lines.append(
                f"| {r['tile_step']} (seed {r['seed']}) | {r['network_s']:.0f} "
                f"({r['network_s_default']:.0f}) | {r['seconds']:.0f} ({r['seconds_default']:.0f}) "
                f"| {r.get('voxel_agreement', float('nan')):.4%} "
                f"| {r.get('min_dice', float('nan')):.3f} "
                f"| {'yes' if same else 'no'} | up to {r.get('level_marker_max_shift_vox', 0):.1f} "
                f"| {', '.join(f'{a} as {b}' for a, b in renames.items()) or 'none'} |"
            )
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1])


def measure_standins(
    images: dict[str, Path],
    descriptions: dict[str, str],
    rest: dict[str, dict],
    weights: Path,
    facts: dict,
    args: argparse.Namespace,
) -> list[dict]:
    """Every image at tile steps 0.5 and 1.0, each in a child; measured or extrapolated.

    An image is measured end to end when patches x the time per patch (`per_patch_rate` of
    the images measured so far) fits in --max-minutes.
    """
    patch = facts["step1"]["patch_size_nibabel_order"]
    rows = []
    for name, path in images.items():
        truth = path.with_name(f"{name}_truth.nii.gz")
        data, channels2 = on_model_grid(path, truth)
        for step in (0.5, 1.0):
            n = {
                "step1": patches(data.shape, patch, step),
                "step2": patches(channels2.shape[1:], patch, step),
            }
            per_patch = per_patch_rate(rows)
            predicted_min = sum(n[k] * per_patch[k] for k in n) / 60
            mode = "measured" if predicted_min <= args.max_minutes else "extrapolated"
            print(
                f"{name} tile step {step}: patches {n}, ~{predicted_min:.1f} min: {mode}",
                flush=True,
            )
            spec = {
                "case": name,
                "image": str(path),
                "truth": str(truth),
                "weights": str(weights),
                "tile_step": step,
                "threads": args.threads,
                "mode": mode,
            }
            run = run_child(spec)
            estimate = estimate_peak_bytes(
                run["grid_1mm"],
                facts["step1"]["region_heads"],
                facts["step2"]["region_heads"],
                step2_shape=run["step2_crop"],
                patch_size=patch,
            )
            rows.append(
                {
                    "case": name,
                    "description": descriptions[name],
                    "tile_step": step,
                    "mode": mode,
                    "patches": n,
                    "grid_1mm": run["grid_1mm"],
                    "step2_crop": run["step2_crop"],
                    "load_s": sum(run["model_load_s"].values()),
                    "rest_s": rest[name]["rest_s"],
                    "rest_of_pipeline": rest[name],
                    "array_estimate_mib": estimate / MIB,
                    "run": run,
                }
            )
    return rows


def per_patch_rate(rows: list[dict]) -> dict:
    """Network seconds per patch, per step, from the measured image with the most patches.

    The time of nnU-Net's path without the network is taken off first. 20 s before any
    image is measured (a first guess, used only to decide what to measure).
    """
    rate: dict = {"step1": 20.0, "step2": 20.0, "from": {}}
    for k in ("step1", "step2"):
        measured = [r for r in rows if r["mode"] == "measured"]
        if measured:
            row = max(measured, key=lambda r: r["patches"][k])
            run = row["run"]
            network = run["measured"][f"{k}_s"] - run["without_network"][f"{k}_s"]
            rate[k] = network / row["patches"][k]
            rate["from"][k] = f"{row['description']}, tile step {row['tile_step']}"
    return rate


def derive(report: dict) -> None:
    """Per-patch rates, network times, peaks and the extrapolation check from the raw runs."""
    rows = report["rows"]
    report["per_patch_s"] = per_patch_rate(rows)
    for row in rows:
        row.update(summarise(row, row["run"], report["per_patch_s"]))
    measured = [r for r in rows if r["mode"] == "measured"]
    report["extrapolation_check"] = extrapolation_check(measured, report["per_patch_s"])


def extrapolation_check(measured: list[dict], per_patch: dict) -> list[dict]:
    """Predict every measured image the extrapolated way and compare with what was measured."""
    checks = []
    for row in measured:
        if set(per_patch["from"].values()) == {
            f"{row['description']}, tile step {row['tile_step']}"
        }:
            continue  # the rates come from this image: it would only check itself
        base = row["run"]["without_network"]
        predicted = sum(
            base[f"{k}_s"] + row["patches"][k] * per_patch[k] for k in ("step1", "step2")
        )
        checks.append(
            {
                "case": row["case"],
                "tile_step": row["tile_step"],
                "predicted_s": predicted,
                "measured_s": sum(row["network_s"].values()),
            }
        )
    return checks


def demo_fast_mode(quick: bool, threads: int) -> dict:
    if quick:
        return fast_mode_with_demo([5000], "cervical", [1.0], threads)
    return fast_mode_with_demo([5000, 5001, 5002], "whole", [1.0], threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: cervical only")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=8.0,
        help="extrapolate an image whose predicted network time exceeds this (default 8)",
    )
    ap.add_argument(
        "--demo-only",
        action="store_true",
        help="only re-measure the demo-model fast mode into the existing realsize.json",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.demo_only:
        target = args.out / "realsize.json"
        report = json.loads(target.read_text())
        report["demo_fast_mode"] = demo_fast_mode(args.quick, args.threads)
        report["demo_fast_mode"]["when"] = time.strftime("%Y-%m-%d %H:%M")
        derive(report)
        target.write_text(json.dumps(report, indent=2, default=str))
        update_readme(report)
        return
    os.environ.setdefault("nnUNet_def_n_proc", str(args.threads))
    work = args.work or Path(tempfile.mkdtemp(prefix="spineseg-realsize-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "WARNING": "stand-in networks with RANDOM weights: their outputs are meaningless; "
        "only time and memory are measured",
        "machine": machine(),
        "loadavg_start": list(os.getloadavg()),
        "threads": args.threads,
        "max_minutes": args.max_minutes,
    }
    try:
        t0 = time.perf_counter()
        print("planning with nnUNetPlannerResEncL ...", flush=True)
        plans = plan_standins(work, 2 if args.quick else 4, "cervical" if args.quick else "whole")
        weights, facts = write_standin_weights(work, plans)
        report["standins"] = facts
        report["planning_s"] = time.perf_counter() - t0
        for step, f in facts.items():
            print(
                f"  {step}: {f['architecture']} {f['features_per_stage']} blocks "
                f"{f['n_blocks_per_stage']} patch {f['patch_size_nibabel_order']} "
                f"{f['parameters'] / 1e6:.1f} M parameters",
                flush=True,
            )

        images = {}
        descriptions = {}
        for name, (description, make) in cases(args.quick).items():
            ph = make()
            images[name] = work / f"{name}.nii.gz"
            nib.save(ph.image, images[name])
            nib.save(ph.labels, work / f"{name}_truth.nii.gz")
            descriptions[name] = description
        rest = rest_of_pipeline(images, args.threads)

        report["rows"] = measure_standins(images, descriptions, rest, weights, facts, args)
        derive(report)
        report["demo_fast_mode"] = demo_fast_mode(args.quick, args.threads)
        report["loadavg_end"] = list(os.getloadavg())
        target = (work if args.quick else args.out) / "realsize.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {target}")
        if not args.quick:
            update_readme(report)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
