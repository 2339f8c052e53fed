"""Accuracy of the demo lesion model on held-out lesion phantoms, through SpineSeg's engine.

    python -m benchmarks.lesion_accuracy [--cases 20] [--spine model|truth] [--out benchmarks/out]

Anatomy seeds start at 6000 (lesion training used 3000-3999, spine training 1000-1999). Each
phantom (cervical or cervico-thoracic, from C1, 1 mm or 3 mm sagittal, T2w) gets 0-3 lesions.
The spine comes from the demo spine models (`--spine model`, levels from the landmark discs
they find, as in a user's run) or from the phantom's own labels (`--spine truth`, to separate
the lesion model from the spine model). Writes `lesion_accuracy.json`:

- lesion-wise detection rate (a truth lesion is found when a predicted lesion overlaps it),
  false positives per image (predicted lesions overlapping no truth lesion), voxel Dice;
- for each measure, the error of the model's lesions against the phantom truth (median and
  90th percentile), and the share of lesions whose main level is exact;
- the same errors for the truth masks measured by SpineSeg (the measuring alone).

Not a test: numbers, not verdicts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from bids_app.engine.options import SegmentOptions
from bids_app.lesions.measures import measure_lesions
from bids_app.lesions.run import LesionRunner
from bids_app.lesions.weights import resolve_lesion_model
from bids_app.phantom.anatomy import random_anatomy
from bids_app.phantom.lesions import LESION_LEVELS, lesion_truth, random_lesions
from bids_app.phantom.render import Acquisition, render

ROOT = Path(__file__).resolve().parents[1]
DEMO_LESION = ROOT / "bids_app" / "demo_models" / "lesion" / "model_lesion_demo"
SEED = 6000
ABSOLUTE = (
    "length_mm",
    "width_mm",
    "max_equivalent_diameter_mm",
    "max_axial_damage_ratio",
    "midsagittal_length_mm",
    "midsagittal_width_mm",
    "ventral_bridge_mm",
    "dorsal_bridge_mm",
    "total_bridge_mm",
)


def case(i: int):
    rng = np.random.default_rng(SEED + i)
    acq = Acquisition(
        fov=str(rng.choice(["cervical", "cervicothoracic"])),
        voxel=str(rng.choice(["iso1", "sag3"], p=[0.7, 0.3])),
        axcodes=str(rng.choice(["RAS", "PSR", "LPI"])),
        contrast="T2w",
        lr_extent=48.0,
        snr=float(rng.uniform(18, 30)),
    )
    anat = random_anatomy(SEED + i)
    # Levels inside the field of view (both start at C1; cervical ends at T2, the other T8).
    levels = LESION_LEVELS[:6] if acq.fov == "cervical" else LESION_LEVELS[:12]
    anat.lesions = random_lesions(rng, anat, levels=levels)
    return render(anat, acq, noise_seed=SEED + i)


def main_level(shares: str) -> str:
    pairs = [p.split(":") for p in shares.split(",") if ":" in p]
    return max(pairs, key=lambda p: float(p[1]))[0] if pairs else "n/a"


def errors(row: dict, truth: dict) -> dict:
    out = {k: abs(float(row[k]) - truth[k]) for k in ABSOLUTE}
    out["volume_rel"] = abs(row["volume_mm3"] - truth["volume_mm3"]) / truth["volume_mm3"]
    out["level_exact"] = float(main_level(row["level_shares"]) == truth["level_main"])
    return out


def summarise(errs: list[dict]) -> dict:
    if not errs:
        return {}
    out: dict = {}
    for key in errs[0]:
        vals = np.array([e[key] for e in errs], float)
        vals = vals[np.isfinite(vals)]
        if key == "level_exact":
            out[key] = float(vals.mean()) if vals.size else None
        elif vals.size:
            out[key] = {"median": float(np.median(vals)), "p90": float(np.percentile(vals, 90))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--spine", choices=["model", "truth"], default="model")
    ap.add_argument("--model", type=Path, default=DEMO_LESION)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    runner = LesionRunner(resolve_lesion_model(args.model), threads=args.threads)
    engine = None
    if args.spine == "model":
        from bids_app.engine.pipeline import SpineSegEngine
        from bids_app.nnunet.weights import resolve_weights

        engine = SpineSegEngine(resolve_weights("demo"), "cpu", threads=args.threads)
    n_truth = found = false_pos = inter = total = 0
    model_errs: list[dict] = []
    truth_errs: list[dict] = []
    images = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        ph = case(i)
        truth_ids = np.asarray(ph.lesions.dataobj)
        spine = ph.labels
        if engine is not None:
            res = engine.segment(ph.image, SegmentOptions(), name=f"case{i}")
            final = res.native.get("final")
            spine = final if final is not None else res.native.get("step1")
        result = runner.segment(ph.image, spine)
        pred = result.report.ids
        assert pred is not None
        inter += int(((pred > 0) & (truth_ids > 0)).sum())
        total += int((pred > 0).sum() + (truth_ids > 0).sum())
        present = [int(k) for k in np.unique(truth_ids) if k]
        matched = set()
        truth_rows = measure_lesions(truth_ids, np.asarray(ph.labels.dataobj), ph.image.affine)
        for k in present:
            truth = lesion_truth(ph.anatomy, k - 1)
            hit = pred[truth_ids == k]
            hit = hit[hit > 0]
            n_truth += 1
            where = np.argwhere(truth_ids == k)
            cut = bool(np.any((where == 0) | (where == np.array(truth_ids.shape) - 1)))
            if hit.size:
                found += 1
                best_id = int(np.bincount(hit).argmax())
                matched.add(best_id)
                if not cut:
                    model_errs.append(errors(result.report.rows[best_id - 1], truth))
        for row_id, row in enumerate(truth_rows.rows, start=1):
            k = int(np.bincount(truth_ids[truth_rows.ids == row_id]).argmax())
            if not row["touches_fov_edge"]:
                truth_errs.append(errors(row, lesion_truth(ph.anatomy, k - 1)))
        false_pos += len([r for r in range(1, len(result.report.rows) + 1) if r not in matched])
        images.append(
            {
                "case": i,
                "acquisition": ph.meta["acquisition"],
                "truth_lesions": len(present),
                "predicted_lesions": len(result.report.rows),
            }
        )
        print(f"case {i}: {len(present)} truth, {len(result.report.rows)} predicted", flush=True)
    summary = {
        "model": str(args.model),
        "spine": args.spine,
        "cases": args.cases,
        "truth_lesions": n_truth,
        "detection_rate": found / n_truth if n_truth else None,
        "false_positives_per_image": false_pos / args.cases,
        "voxel_dice": 2 * inter / total if total else None,
        "errors_model": summarise(model_errs),
        "errors_measuring_truth_masks": summarise(truth_errs),
        "targets": {
            "detection_rate": ">= 0.90",
            "false_positives_per_image": "<= 0.2",
            "length_mm median": "<= 2",
            "level_exact": ">= 0.95",
        },
        "images": images,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lesion_accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    keys = ("detection_rate", "false_positives_per_image", "voxel_dice")
    print(json.dumps({k: summary[k] for k in keys} | {"errors": summary["errors_model"]}))


if __name__ == "__main__":
    main()
