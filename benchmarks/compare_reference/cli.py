"""Command line: parse, run the cases and the batch, write the JSON and Markdown results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from . import __doc__ as OVERVIEW
from .cases import DEFAULT_CASES, prepare_case, real_scans
from .config import DEMO_WEIGHTS, REFERENCE, REPO, TOOLS, Setup
from .driver import DEFAULT_BATCH_CASE, run_batch, run_case
from .report import markdown, write_atomic
from .run_ours import engine_batch
from .run_ref import DEFAULT_PRELOAD, reference_data_dir


def default_spineseg_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spineseg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bids_app.cli.main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description=OVERVIEW.splitlines()[0],
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
        write_atomic(json_path, json.dumps(report, indent=1) + "\n")
        write_atomic(md_path, markdown(report))
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
        write_atomic(json_path, json.dumps(report, indent=1) + "\n")
    if args.batch > 0:
        report["batch"] = run_batch(setup, args.batch, tools, args.batch_case)
    write_atomic(json_path, json.dumps(report, indent=1) + "\n")
    write_atomic(md_path, markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0
