"""Throughput of the participant level: one image at a time vs the pipeline, back to back.

    python -m benchmarks.throughput [--images 8] [--device cpu] [--omp-nthreads 1]

N phantom images (whole-spine and partial fields of view mixed, one subject each) go through
`spineseg participant` in each mode, with the same weights, device and threads. Per mode it
records the wall time, the network time (the sum of every image's device time from its
stamp), how busy the network workers were (network_s / wall_s / workers), the peak RSS of the
run's process, and whether every NIfTI, TSV and JSON (times aside) is identical to the
sequential run. Writes benchmarks/out/throughput.json and the docs/expect.md table between the
`throughput` markers. Numbers, not verdicts: nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib

from bids_app import __version__
from bids_app.phantom.render import Acquisition, render_phantom

ROOT = Path(__file__).resolve().parents[1]
FOVS = ("whole", "cervical", "whole", "cervicothoracic")
TIME_KEYS = ("generated", "finished", "timings")
MARKERS = ("<!-- throughput:start -->", "<!-- throughput:end -->")


def make_dataset(root: Path, n: int, seed: int = 6000) -> Path:
    """A raw BIDS dataset of `n` T2w phantoms, one subject each, fields of view mixed."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "throughput phantoms", "BIDSVersion": "1.10.1", "DatasetType": "raw"})
    )
    for i in range(n):
        ph = render_phantom(seed + i, Acquisition(fov=FOVS[i % len(FOVS)], contrast="T2w"))
        path = root / f"sub-tp{i:02d}" / "anat" / f"sub-tp{i:02d}_T2w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(ph.image, path)
    return root


WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def run_mode(dataset: Path, out: Path, options: list[str]) -> dict:
    """One participant run in a fresh process; its wall time and peak RSS (KiB from the
    kernel's accounting of the child, which is the whole run: it uses threads, not
    processes)."""
    cmd = [str(Path(sys.executable).parent / "spineseg"), str(dataset), str(out), "participant"]
    cmd += ["--skip-bids-validation", "-q", *options]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    stamps = [json.loads(p.read_text()) for p in (out / "logs" / "status").glob("*.json")]
    network = sum(
        t.get("step1_device", 0) + t.get("step2_device", 0) for t in (s["timings"] for s in stamps)
    )
    budget = next(line for line in proc.stderr.splitlines() if "CPU budget" in line)
    workers = int(budget.split("): ")[1].split(" network")[0])
    return {
        "wall_s": round(wall, 1),
        "images": len(stamps),
        "statuses": sorted({s["status"] for s in stamps}),
        "network_s": round(network, 1),
        "network_workers": workers,
        "network_busy": round(network / wall / workers, 3),
        "peak_rss_mib": round(peak_kib / 1024),
        "budget": budget.split("INFO", 1)[-1].strip(),
    }


def outputs(root: Path) -> dict[str, object]:
    """NIfTI, TSV and JSON outputs, JSON without its times (logs excluded)."""
    found: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] == "logs":
            continue
        if p.name.endswith(".json"):
            data = json.loads(p.read_text())
            found[rel.as_posix()] = {k: v for k, v in data.items() if k not in TIME_KEYS}
        elif p.name.endswith((".nii.gz", ".tsv")):
            found[rel.as_posix()] = p.read_bytes()
    return found


def readme_table(result: dict) -> str:
    rows = [
        "| mode | wall (s) | images | network (s) | network busy | peak RSS (MiB) | identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["modes"].items():
        rows.append(
            f"| {name} | {m['wall_s']} | {m['images']} | {m['network_s']} | "
            f"{m['network_busy']:.2f} | {m['peak_rss_mib']} | "
            f"{'yes' if m['identical_outputs'] else 'NO'} |"
        )
    machine = result["machine"]
    rows.append("")
    rows.append(
        f"{result['images']} phantom images ({', '.join(FOVS)} repeated), {result['weights']} "
        f"weights, device {result['device']}, {machine['cpus']} CPUs ({machine['processor']}), "
        f"load average before the runs {machine['loadavg_before']}; measured "
        f"{result['date']} with spineseg {result['version']}."
    )
    return "\n".join(rows)


def update_readme(table: str) -> None:
    readme = ROOT / "docs" / "expect.md"
    text = readme.read_text()
    start, end = MARKERS
    if start not in text:
        return
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default="demo")
    ap.add_argument("--omp-nthreads", default="1", help="network threads (default 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spineseg-throughput-"))
    try:
        dataset = make_dataset(work / "bids", args.images)
        common = ["--weights", args.weights, "--device", args.device]
        common += ["--assume-top-disc", "C2-C3", "--omp-nthreads", args.omp_nthreads]
        loadavg = [round(v, 2) for v in os.getloadavg()]
        modes = {
            "sequential (--pipeline off)": [*common, "--pipeline", "off"],
            "pipelined": common,
        }
        results: dict[str, dict] = {}
        reference = None
        for i, (name, options) in enumerate(modes.items()):
            out = work / f"out{i}"
            results[name] = run_mode(dataset, out, options)
            found = outputs(out)
            reference = reference or found
            results[name]["identical_outputs"] = found == reference
            print(name, json.dumps(results[name]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "what": "participant-level throughput, sequential vs pipelined, same run conditions",
        "version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "device": args.device,
        "weights": args.weights,
        "omp_nthreads": args.omp_nthreads,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": len(os.sched_getaffinity(0)),
            "loadavg_before": loadavg,
        },
        "modes": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_readme:
        update_readme(readme_table(result))
    print(readme_table(result))


if __name__ == "__main__":
    main()
