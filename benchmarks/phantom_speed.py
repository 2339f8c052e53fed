"""Render time of a whole-spine 1 mm phantom on one core (target: under 5 s).

    OMP_NUM_THREADS=1 python benchmarks/phantom_speed.py [--repeats 3]

Writes `benchmarks/out/phantom_speed.json` and the line between the `phantom-speed` markers
of docs/expect.md. CPU time of this process is reported beside wall time, because the wall time
on a shared machine also counts other people's work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bids_app.phantom.render import Acquisition, render_phantom

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    runs = []
    for k in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        ph = render_phantom(5000 + k, Acquisition(fov="whole", voxel="iso1", contrast="T2w"))
        runs.append(
            {
                "seed": 5000 + k,
                "shape": list(ph.image.shape),
                "wall_s": time.perf_counter() - w0,
                "cpu_s": time.process_time() - c0,
            }
        )
        print(runs[-1])
    result = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": runs,
        "median_cpu_s": float(np.median([r["cpu_s"] for r in runs])),
        "median_wall_s": float(np.median([r["wall_s"] for r in runs])),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "phantom_speed.json").write_text(json.dumps(result, indent=2))
    readme = ROOT / "docs" / "expect.md"
    start, end = "<!-- phantom-speed:start -->", "<!-- phantom-speed:end -->"
    text = readme.read_text() if readme.exists() else ""
    if start in text:
        line = (
            f"Whole-spine 1 mm phantom ({'x'.join(map(str, runs[0]['shape']))} voxels): "
            f"median {result['median_cpu_s']:.1f} s CPU, {result['median_wall_s']:.1f} s wall "
            f"on one core ({result['when']}, `benchmarks/phantom_speed.py`)."
        )
        head, rest = text.split(start, 1)
        readme.write_text(head + start + "\n" + line + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
