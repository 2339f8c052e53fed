"""How far SpineSeg's lesion measures are from the truth when the mask itself is right.

    nice -n 10 python -m benchmarks.lesion_measuring [--cases 20] [--out benchmarks/out]

The phantoms of `benchmarks.lesion_accuracy` (same seeds, same 23 lesions with 20 cases), but
no network: SpineSeg measures the phantom's own lesion masks on its own spine labels. The
error left is the measuring's (voxelisation, grid, midsagittal plane), so comparing it with
`lesion_accuracy.json`'s `errors_model` tells how much of the model's error is its mask.
Writes `lesion_measuring.json`: per lesion the errors of every measure, and their median,
90th percentile and maximum. Not a test: numbers, not verdicts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.lesion_accuracy import case, errors
from bids_app.lesions.measures import measure_lesions
from bids_app.phantom.lesions import lesion_truth

ROOT = Path(__file__).resolve().parents[1]


def spread(errs: list[dict]) -> dict:
    out: dict = {}
    for key in errs[0] if errs else []:
        vals = np.array([e[key] for e in errs], float)
        vals = vals[np.isfinite(vals)]
        if key != "level_exact" and vals.size:
            out[key] = {
                "median": float(np.median(vals)),
                "p90": float(np.percentile(vals, 90)),
                "max": float(vals.max()),
                "n": int(vals.size),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lesions = []
    for i in range(args.cases):
        ph = case(i)
        ids = np.asarray(ph.lesions.dataobj)
        rows = measure_lesions(ids, np.asarray(ph.labels.dataobj), ph.image.affine)
        for row_id, row in enumerate(rows.rows, start=1):
            k = int(np.bincount(ids[rows.ids == row_id]).argmax())
            if row["touches_fov_edge"]:
                continue
            err = errors(row, lesion_truth(ph.anatomy, k - 1))
            lesions.append({"case": i, "lesion": k, "grid": ph.meta["acquisition"], **err})
        print(f"case {i}: {len(rows.rows)} lesion(s)", flush=True)
    keys = [k for k in lesions[0] if k not in ("case", "lesion", "grid")] if lesions else []
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}",
        "cases": args.cases,
        "lesions": len(lesions),
        "errors_measuring_truth_masks": spread([{k: e[k] for k in keys} for e in lesions]),
        "seconds": round(time.perf_counter() - t0, 1),
        "per_lesion": lesions,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lesion_measuring.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["errors_measuring_truth_masks"], indent=1))


if __name__ == "__main__":
    main()
