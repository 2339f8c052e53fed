"""Accuracy of the demo models on held-out phantoms, through SpineSeg's own engine.

    python benchmarks/demo_accuracy.py [--cases 3] [--fov whole] [--out benchmarks/out]

Seeds start at 5000 (training used 1000-1999). Writes `demo_accuracy.json` with Dice per
label and the share of vertebrae and discs whose level label is right, and refreshes the
table between the `demo-accuracy` markers in README.md. Not a test: numbers, not verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bids_app import labels as L
from bids_app.engine.pipeline import SpineSegEngine
from bids_app.nnunet.weights import resolve_weights
from bids_app.phantom.render import Acquisition, render_phantom

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Dice per label present in the truth, and level correctness of vertebrae and discs.

    A structure has the right level when the predicted label covering most of it is its own.
    """
    present = [int(v) for v in np.unique(truth) if v]
    per_label = {L.level_name(v): dice(truth == v, pred == v) for v in present}
    levels = [v for v in present if L.is_disc(v) or L.is_vertebra(v)]
    right = []
    for v in levels:
        got = pred[truth == v]
        got = got[got > 0]
        right.append(bool(got.size) and int(np.bincount(got).argmax()) == v)
    return {
        "dice": per_label,
        "mean_dice": float(np.mean(list(per_label.values()))),
        "levels_total": len(levels),
        "levels_correct": int(sum(right)),
        "wrong_levels": [L.level_name(v) for v, ok in zip(levels, right, strict=True) if not ok],
    }


def update_readme(summary: dict) -> None:
    readme = ROOT / "README.md"
    start, end = "<!-- demo-accuracy:start -->", "<!-- demo-accuracy:end -->"
    text = readme.read_text() if readme.exists() else ""
    if start not in text:
        return
    rows = [
        "| case | mean Dice | levels right | seconds |",
        "|---|---|---|---|",
        *(
            f"| {c['name']} | {c['mean_dice']:.3f} | {c['levels_correct']}/{c['levels_total']} "
            f"| {c['seconds']:.0f} |"
            for c in summary["cases"]
        ),
        f"| **all** | **{summary['mean_dice']:.3f}** | **{summary['level_accuracy']:.1%}** | |",
        "",
        f"_{summary['when']}, {summary['machine']}, {summary['device']}; "
        f"`python benchmarks/demo_accuracy.py --cases {len(summary['cases'])} "
        f"--fov {summary['fov']}"
        + (f" --assume-top-disc {summary['assume_top_disc']}" if summary["assume_top_disc"] else "")
        + "`._",
    ]
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(head + start + "\n" + "\n".join(rows) + "\n" + end + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--fov", default="whole")
    ap.add_argument("--contrast", default="T2w")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default="demo")
    ap.add_argument(
        "--assume-top-disc",
        type=int,
        default=None,
        metavar="LABEL",
        help="final label of the top disc when no landmark is found (63 = C2-C3)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    engine = SpineSegEngine(resolve_weights(args.weights), device=args.device)
    cases = []
    for k in range(args.cases):
        seed = 5000 + k
        ph = render_phantom(seed, Acquisition(fov=args.fov, contrast=args.contrast))
        t0 = time.perf_counter()
        res = engine.segment(ph.image, top_disc=args.assume_top_disc, name=f"seed {seed}")
        seconds = time.perf_counter() - t0
        truth = np.asarray(ph.labels.dataobj)
        if "final" in res.native:
            pred = np.asarray(res.native["final"].dataobj)
        else:
            pred = np.zeros_like(truth)
        case = {
            "name": f"{args.fov} {args.contrast} seed {seed}",
            "seconds": seconds,
            **score(truth, pred),
            "errors": res.errors,
            "landmarks": res.landmarks,
            "timings": res.timings,
        }
        cases.append(case)
        print(
            f"{case['name']}: mean Dice {case['mean_dice']:.3f}, levels "
            f"{case['levels_correct']}/{case['levels_total']}, {seconds:.0f} s {res.errors}"
        )
    total = sum(c["levels_total"] for c in cases)
    summary = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {len(os.sched_getaffinity(0))} CPUs",
        "device": args.device,
        "fov": args.fov,
        "assume_top_disc": args.assume_top_disc,
        "cases": cases,
        "mean_dice": float(np.mean([c["mean_dice"] for c in cases])),
        "level_accuracy": sum(c["levels_correct"] for c in cases) / max(total, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_accuracy.json").write_text(json.dumps(summary, indent=2))
    update_readme(summary)
    print(f"mean Dice {summary['mean_dice']:.3f}, levels right {summary['level_accuracy']:.1%}")


if __name__ == "__main__":
    main()
