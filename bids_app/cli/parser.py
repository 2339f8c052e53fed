"""Argument parsers: the BIDS-App command line (docs/bids-conventions.md §7.1) and the subcommands.

argparse exits 2 on usage errors; BIDS Apps reserve 64 for that (execution-spec), so every
parser here exits 64. The analysis level is checked after parsing so that a bad level gets
its own code (17) instead of a generic usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bids_app import __version__
from bids_app.engine.options import (
    FAST_PRECISION,
    FAST_TILE_STEP,
    REFERENCE_TILE_STEP,
    TILE_STEP_RANGE,
)
from bids_app.nnunet import PRECISIONS, REFERENCE_PRECISION
from bids_app.phantom.anatomy import SHAPES, Deformity, Slip
from bids_app.plumbing.errors import EXIT_CODE_HELP, ExitCode
from bids_app.plumbing.labels import DISCS
from bids_app.run import slurm
from bids_app.run.config import DEFAULT_LESION_SUFFIXES
from bids_app.run.resources import DEVICE_HELP, parse_devices

PROG = "spineseg"
LEVELS = ("participant", "group")
SUBCOMMANDS = ("segment", "weights", "phantoms", "review")

SUBCOMMAND_HELP = """\
subcommands (given as the first argument, instead of bids_dir):
  spineseg segment INPUT OUTPUT_DIR   segment one NIfTI image, no BIDS needed
  spineseg weights                    install or verify the TotalSpineSeg weights
  spineseg phantoms OUT_DIR           write a small synthetic BIDS dataset
  spineseg review OUTPUT_DIR          open the images of group_worklist.tsv in a viewer
"""


class UsageParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 64 (EX_USAGE) instead of 2; resolves --fast."""

    def error(self, message: str):  # type: ignore[override,unused-ignore]
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if hasattr(parsed, "fast"):
            _resolve_precision(self, parsed)
        return parsed


def _uses_cpu(specs: tuple[str, ...]) -> bool:
    """Whether any of these --device specs puts a network on the CPU."""
    import torch

    gpu = torch.cuda.is_available()
    return any(s == "cpu" or (s == "auto" and not gpu) for s in specs)


def _resolve_precision(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill --tile-step and --precision from --fast (or their defaults); say in one line when
    bfloat16 would not be native on the CPU (emulated bfloat16 is slower than float32)."""
    if args.fast and (args.tile_step is not None or args.precision is not None):
        parser.error("--fast sets --tile-step and --precision: give either --fast or those")
    on_cpu = cpu_native = False
    if args.fast or args.precision == "bf16":
        from bids_app.nnunet.model import cpu_bf16_native

        on_cpu = _uses_cpu(args.device)
        cpu_native = on_cpu and cpu_bf16_native()
    if args.fast:
        # --fast is what met the agreement bar with the demo models (docs/expect.md): bfloat16
        # alone. On a GPU nnU-Net's float16 autocast runs already, so it changes nothing there.
        args.tile_step = FAST_TILE_STEP
        args.precision = FAST_PRECISION if cpu_native else REFERENCE_PRECISION
        if on_cpu and not cpu_native:
            print(
                f"{PROG}: --fast: this CPU has no bfloat16 unit (avx512_bf16/amx_bf16), so "
                "--fast changes nothing here; --tile-step 0.75 or 1.0 is faster but agrees "
                "less with the default (see the docs)",
                file=sys.stderr,
            )
    elif args.precision == "bf16" and on_cpu and not cpu_native:
        print(
            f"{PROG}: warning: --precision bf16: this CPU has no bfloat16 unit "
            "(avx512_bf16/amx_bf16); it is emulated and slower than fp32",
            file=sys.stderr,
        )
    if args.tile_step is None:
        args.tile_step = REFERENCE_TILE_STEP
    if args.precision is None:
        args.precision = REFERENCE_PRECISION


class BidsAppParser(UsageParser):
    """Also keeps the command line as typed (`argv`): --slurm-script passes it to the tasks.

    `slurm_options` (dest -> option) are the options that shape the SLURM scripts, never a
    task: the only ones removed from the tasks' command line (cli/slurm_args.py).
    """

    slurm_options: dict[str, str]

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        parsed.argv = list(sys.argv[1:] if args is None else args)
        return parsed


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what} integer")
    return value


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def devices(text: str) -> tuple[str, ...]:
    try:
        return parse_devices(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def tile_step(text: str) -> float:
    """A sliding-window step within TILE_STEP_RANGE (fraction of the network's patch)."""
    low, high = TILE_STEP_RANGE
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between {low} and {high}")
    return value


def disc_level(value: str) -> int:
    """A disc name (C2-C3, T12-L1, L5-S...) as its final label id."""
    by_name = {name.upper(): label for label, name in DISCS.items()}
    try:
        return by_name[value.strip().upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown disc {value!r} (use a level name such as C2-C3, T12-L1 or L5-S)"
        ) from None


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path


def _add_engine_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--device",
        type=devices,
        default=("auto",),
        metavar="DEVICE[,DEVICE...]",
        help=f"{DEVICE_HELP}; one network worker per device, models loaded once on each "
        "(default: auto = every visible GPU, else the CPU)",
    )
    parser.add_argument(
        "--weights",
        metavar="DIR",
        help="TotalSpineSeg weights folder (default: $SPINESEG_WEIGHTS, else the per-user "
        "folder that `spineseg weights` installs into); `demo` selects the shipped demo models",
    )
    parser.add_argument(
        "--iso", action="store_true", help="also write the outputs on the 1 mm model grid"
    )
    parser.add_argument(
        "--assume-top-disc",
        metavar="DISC",
        type=disc_level,
        help="when neither a landmark disc (C2-C3, C7-T1, T12-L1, L5-S) nor a localizer numbers "
        "the discs, number them from the most superior one as DISC (e.g. C2-C3 for scans that "
        "start at C1), and let step 2 keep that numbering; off by default, as in TotalSpineSeg",
    )
    parser.add_argument(
        "--tile-step",
        type=tile_step,
        metavar="F",
        help=f"sliding-window step of the networks, as a fraction of their patch: "
        f"{REFERENCE_TILE_STEP} (default) is TotalSpineSeg's; up to {TILE_STEP_RANGE[1]} is an "
        "opt-in fast mode for CPUs (fewer patches, and the patch cut down to an image smaller "
        "than it; a different result, discs agree less; recorded in the sidecars and status "
        "stamps)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="arithmetic of the networks: auto (default) is TotalSpineSeg's (float32 on CPU, "
        "nnU-Net's float16 autocast on GPU); fp32; bf16 = bfloat16 autocast, about 2.4x "
        "faster on CPUs with a bfloat16 unit (avx512_bf16/amx_bf16), a slightly different "
        "result, recorded like --tile-step",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"fast profile: --precision {FAST_PRECISION} on a CPU that computes bfloat16 "
        "natively (avx512_bf16/amx_bf16), the one speed-up that met SpineSeg's agreement bar "
        "with the default; it changes nothing on other CPUs and on GPUs; measured speed-ups "
        "and agreement are in the README",
    )


def bids_app_parser() -> BidsAppParser:
    """The BIDS-App parser: `spineseg bids_dir output_dir {participant,group} [options]`."""
    p = BidsAppParser(
        prog=PROG,
        description="Whole-spine MRI segmentation (TotalSpineSeg method) as a BIDS App: "
        "vertebrae, intervertebral discs, spinal cord and canal.",
        epilog=EXIT_CODE_HELP + "\n" + SUBCOMMAND_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="root of the BIDS dataset (read only)")
    p.add_argument(
        "output_dir",
        type=Path,
        help="derivatives folder to write, e.g. <bids_dir>/derivatives/spineseg "
        "(the group level reads only this folder)",
    )
    p.add_argument(
        "analysis_level",
        metavar="{participant,group}",
        help="participant: segment images; group: summarise the participant outputs",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    sel = p.add_argument_group("selecting images")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        metavar="LABEL|FILE",
        help="participants to process, with or without 'sub-'; @FILE, or a FILE whose name "
        "ends in .txt or .tsv, lists one per line (participants.tsv works); default: all",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        "--session-id",
        dest="session_label",
        nargs="+",
        metavar="LABEL|FILE",
        help="sessions to process, with or without 'ses-'; @FILE or a .txt/.tsv FILE lists "
        "one per line; default: all",
    )
    sel.add_argument(
        "--suffix",
        nargs="+",
        metavar="SUFFIX",
        help="image suffixes to segment (anat datatype); default: T2w T1w",
    )
    sel.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON {"<kind>": {<pybids entity>: value}}; kinds are the lower-case suffixes '
        '("t2w", "t1w") and "localizer"; null = entity absent, "*" = any value; the given '
        "keys replace those of the default query, the others are kept",
    )
    sel.add_argument(
        "--localizer-suffix",
        metavar="SUFFIX",
        help="in each subject/session, segment the image with this suffix first and use its "
        "labels to guide the labeling of the other images (TotalSpineSeg --loc)",
    )
    sel.add_argument(
        "--localizer",
        metavar="QUERY",
        help="like --localizer-suffix but with a pybids query: inline JSON or a JSON file, "
        'e.g. \'{"suffix": "T2w", "acquisition": "wholespine"}\'',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        "--skip-bids-validator",
        "--skip_bids_validator",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run bids-validator-deno on the input",
    )

    run = p.add_argument_group("processing")
    _add_engine_options(run)
    lesions = p.add_argument_group("lesions")
    lesions.add_argument(
        "--lesion-model",
        metavar="DIR",
        help="also segment and measure spinal cord lesions with this nnU-Net lesion model "
        "(a folder in nnU-Net's result layout, e.g. SCIseg; see `spineseg weights --lesion`); "
        "`demo` selects the demo lesion model (phantoms only)",
    )
    lesions.add_argument(
        "--lesion-suffix",
        nargs="+",
        default=list(DEFAULT_LESION_SUFFIXES),
        metavar="SUFFIX",
        help=f"images the lesion model runs on (default: {' '.join(DEFAULT_LESION_SUFFIXES)})",
    )
    run.add_argument(
        "--step1-only",
        "--step1",
        dest="step1_only",
        action="store_true",
        help="run step 1 only (no final instance labels)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="recompute images that are already done"
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="recompute images that failed or were partial in an earlier run with the same "
        "version, options and model (skipped by default: they would fail the same way)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the selection and what would be segmented or skipped, and why; writes "
        "nothing and needs no weights",
    )
    run.add_argument(
        "--reports-only",
        action="store_true",
        help="only regenerate QC and reports from existing outputs (no segmentation)",
    )
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="folder for the run's temporary files (the validator's view of the selected "
        "participants, temporary files of the libraries: TMPDIR points there during the run), "
        "in a per-run subfolder removed at the end; e.g. a node's local disk when /tmp is "
        "small (default: the system's temporary folder)",
    )
    run.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        "--n_cpus",
        dest="nprocs",
        type=positive_int,
        metavar="N",
        help="the whole CPU budget of the run (default: what the process may use: SLURM "
        "allocation, container CPU quota or CPU affinity)",
    )
    run.add_argument(
        "--omp-nthreads",
        type=positive_int,
        metavar="N",
        help="threads of each network worker (default: the budget divided among CPU "
        "workers, 1 per GPU); capped by the budget",
    )
    run.add_argument(
        "--pipeline",
        choices=("on", "off"),
        default="on",
        help="on: while one image is in a network, other images are read, labelled, written "
        "and checked; off: one image at a time (same outputs) (default: on)",
    )
    run.add_argument(
        "--max-in-flight",
        type=positive_int,
        metavar="N",
        help="images in memory at once (default: 2 per network worker, 1 with --pipeline off "
        "or --nprocs 1); each whole-spine image holds about 1-2 GB on the 1 mm grid",
    )
    run.add_argument(
        "--cpu-workers",
        type=non_negative_int,
        metavar="N",
        help="worker processes (spawned) for the CPU stages that hold Python's lock most "
        "(vertebral bodies, QC), so that on a GPU node they scale over the cores; 0 runs "
        "them in the images' threads; outputs are the same either way (default: on GPUs one "
        "per image in flight, up to the CPUs left after the network workers; on the CPU 0)",
    )
    run.add_argument(
        "--mem-mb",
        "--mem_mb",
        dest="mem_mb",
        type=positive_int,
        metavar="MB",
        help="memory the run may use (default: the SLURM or container limit, else the "
        "machine's); images whose 1 mm arrays would not fit fail alone before allocating, and "
        "images in flight wait until their estimated memory fits",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (log lines still go to the log)"
    )
    run.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: also libraries)"
    )
    run.add_argument(
        "--notrack", action="store_true", help="accepted for compatibility; SpineSeg sends nothing"
    )
    run.add_argument(
        "--corrections",
        metavar="DIR|none",
        help="BIDS derivatives folder of manual corrections (disc points, corrected "
        "segmentations; see the README's correction loop). Default: bids_dir/derivatives/labels "
        "when it exists; 'none' reads none",
    )
    _add_slurm_options(p)
    group = p.add_argument_group("group level")
    group.add_argument(
        "--ratings-dir",
        type=existing_dir,
        metavar="DIR",
        help="folder of the sub-<label>_ratings.json files saved from the subject reports "
        "(default: output_dir/ratings); merged into group_qc.tsv",
    )
    return p


def _add_slurm_options(p: BidsAppParser) -> None:
    """The SLURM group (bids_app/run/slurm.py): write an array script instead of running."""
    group = p.add_argument_group(
        "SLURM",
        "With --slurm-script, the participant level writes a SLURM array script (one task\n"
        "per participant), its group-level script and the frozen selection, and runs\n"
        "nothing. Every other option is passed to the tasks unchanged (see the README).",
    )
    actions = [
        group.add_argument(
            "--slurm-script",
            type=Path,
            metavar="FILE",
            help="write the array script to FILE, the group level to FILE_group.sh and the "
            "selected images to FILE_selection.json (FILE without .sh)",
        ),
        group.add_argument(
            "--slurm-per-session",
            action="store_true",
            help="one task per participant x session instead of per participant",
        ),
        group.add_argument(
            "--slurm-throttle",
            type=positive_int,
            metavar="N",
            help="at most N tasks of each array at once (%%N)",
        ),
        group.add_argument(
            "--slurm-mem",
            type=slurm.slurm_mem,
            metavar="MEM",
            help=f"memory per task (default {slurm.DEFAULT_MEM}), also passed to the task as "
            f"--mem-mb; CPUs per task are --nprocs (default {slurm.DEFAULT_CPUS})",
        ),
        group.add_argument(
            "--slurm-time",
            type=slurm.slurm_time,
            metavar="TIME",
            help=f"time limit per task (default {slurm.DEFAULT_TIME})",
        ),
        group.add_argument(
            "--slurm-gpus",
            type=positive_int,
            metavar="N",
            help="GPUs per task (--gres=gpu:N; with --container also --nv)",
        ),
        group.add_argument(
            "--slurm-partition", type=slurm.slurm_name, metavar="NAME", help="partition"
        ),
        group.add_argument(
            "--slurm-account",
            type=slurm.slurm_name,
            metavar="NAME",
            help="account to charge (both scripts)",
        ),
        group.add_argument(
            "--container",
            type=Path,
            metavar="SIF",
            help="run the tasks with this Apptainer image instead of this installation",
        ),
        group.add_argument(
            "--slurm-max-array",
            type=positive_int,
            metavar="N",
            help=f"the cluster's MaxArraySize (default {slurm.DEFAULT_MAX_ARRAY}; see "
            "`scontrol show config`): more tasks are split into several array scripts",
        ),
        group.add_argument(
            "--slurm-group-partition",
            type=slurm.slurm_name,
            metavar="NAME",
            help="partition of the group-level job (default: --slurm-partition, unless "
            "--slurm-gpus is given: then the cluster's default partition)",
        ),
        group.add_argument(
            "--slurm-group-mem",
            type=slurm.slurm_mem,
            metavar="MEM",
            help=f"memory of the group-level job (default {slurm.DEFAULT_GROUP_MEM})",
        ),
        group.add_argument(
            "--slurm-group-time",
            type=slurm.slurm_time,
            metavar="TIME",
            help=f"time limit of the group-level job (default {slurm.DEFAULT_GROUP_TIME})",
        ),
    ]
    p.slurm_options = {a.dest: a.option_strings[0] for a in actions}
    group.add_argument(
        slurm.TASK_OPTION,
        type=Path,
        metavar="FILE",
        help="segment the images listed in FILE (written by --slurm-script; its array tasks "
        "pass it) instead of indexing the dataset",
    )


def segment_parser() -> UsageParser:
    p = UsageParser(
        prog=f"{PROG} segment",
        description="Segment one NIfTI image (no BIDS). Writes <name>_seg-spine_dseg.nii.gz, "
        "<name>_seg-step1_dseg.nii.gz, <name>_seg-discmarkers_dseg.nii.gz, "
        "<name>_label-cord_probseg.nii.gz and <name>_label-canal_probseg.nii.gz (+ JSON).",
        epilog="exit codes: 0 ok, 1 the image could not be segmented, 3 partial result (no "
        "final labels; the message says why), 64 usage, "
        "66 input missing, 70 a bug (traceback in OUTPUT_DIR/logs/crash-*.txt), 73/74 output "
        "errors, 78 weights missing or corrupt",
    )
    p.add_argument("input", type=Path, help="a .nii or .nii.gz image")
    p.add_argument("output_dir", type=Path, help="folder for the outputs (created)")
    p.add_argument("--step1", action="store_true", help="run step 1 only")
    p.add_argument(
        "--loc",
        type=Path,
        metavar="FILE",
        help="final labels of a localizer image of the same subject/session",
    )
    p.add_argument(
        "--lesion-model",
        metavar="DIR",
        help="also segment and measure spinal cord lesions with this nnU-Net lesion model "
        "(`demo`: the demo lesion model); writes <name>_label-lesion_mask.nii.gz and the "
        "<name>_seg-lesion[levels]_morphometry.tsv tables (+ JSON)",
    )
    _add_engine_options(p)
    p.add_argument("--omp-nthreads", type=positive_int, metavar="N", help="threads")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def weights_parser() -> UsageParser:
    p = UsageParser(
        prog=f"{PROG} weights",
        description="Install the TotalSpineSeg nnU-Net weights (verified by SHA-256), or "
        "verify an installation with --verify.",
        epilog="exit codes: 0 ok, 78 weights missing, corrupt or not installable, 64 usage",
    )
    p.add_argument("--release", help="weights release (default: the newest known)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="ZIP|DIR|URL",
        help="install from a release zip, a folder (of zips or unpacked) or a URL instead of "
        "downloading from GitHub",
    )
    p.add_argument(
        "--dest",
        type=Path,
        metavar="DIR",
        help="weights root (default: $SPINESEG_WEIGHTS or the per-user data folder)",
    )
    p.add_argument("--force", action="store_true", help="reinstall even if already installed")
    p.add_argument(
        "--verify", action="store_true", help="only check the installed weights and print hashes"
    )
    p.add_argument(
        "--lesion",
        action="store_true",
        help="a lesion model (nnU-Net result layout, e.g. SCIseg) instead: install it from "
        "--from ZIP|DIR into --dest (default: <weights folder>/lesion), or --verify --dest DIR",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def phantoms_parser() -> UsageParser:
    p = UsageParser(
        prog=f"{PROG} phantoms",
        description="Write a small synthetic BIDS dataset of spine phantoms (with ground truth "
        "in derivatives/truth) for demos and tests.",
    )
    p.add_argument("out_dir", type=Path, help="dataset root to create")
    p.add_argument("--subjects", type=positive_int, default=3, metavar="N", help="default: 3")
    p.add_argument("--seed", type=int, default=7000, metavar="S", help="default: 7000")
    p.add_argument(
        "--lesions",
        action="store_true",
        help="draw 0-3 spinal cord lesions per subject (truth in derivatives/truth)",
    )
    p.add_argument(
        "--deformity",
        action="append",
        type=deformity,
        default=[],
        metavar="LEVEL:SHAPE:GRADE",
        help="a vertebral body deformity in every subject, e.g. C5:wedge:2 (shape wedge, "
        "biconcave or crush; Genant grade 1-3); repeatable; truth in derivatives/truth",
    )
    p.add_argument(
        "--slip",
        action="append",
        type=slip,
        default=[],
        metavar="DISC:PERCENT",
        help="an anterior slip of the vertebra above DISC by PERCENT of the lower body's "
        "depth in every subject, e.g. C4-C5:25; repeatable",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def deformity(text: str) -> Deformity:
    """LEVEL:SHAPE:GRADE (C5:wedge:2) as a phantom deformity."""
    parts = text.split(":")
    if len(parts) != 3 or parts[1] not in SHAPES or parts[2] not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not LEVEL:SHAPE:GRADE (shape {', '.join(SHAPES)}; grade 1, 2 or 3)"
        )
    return Deformity(parts[0].upper(), parts[1], int(parts[2]))


def slip(text: str) -> Slip:
    """DISC:PERCENT (L4-L5:25) as a phantom slip."""
    disc, _, percent = text.rpartition(":")
    try:
        value = float(percent)
    except ValueError:
        value = float("nan")
    if not disc or not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not DISC:PERCENT with 0 < PERCENT <= 100")
    return Slip(disc.upper().replace("L5-S1", "L5-S"), value)


def review_parser() -> UsageParser:
    p = UsageParser(
        prog=f"{PROG} review",
        description="Open each image of group_worklist.tsv (written by the group level) with "
        "its final labels in FSLeyes or ITK-SNAP, one after the other; the command lines are "
        "printed when no viewer is installed.",
    )
    p.add_argument("output_dir", type=Path, help="SpineSeg output folder")
    p.add_argument(
        "--bids-dir",
        type=existing_dir,
        metavar="DIR",
        help="raw dataset (default: the output's DatasetLinks.raw)",
    )
    p.add_argument("--viewer", choices=("fsleyes", "itksnap"), help="default: the first installed")
    p.add_argument(
        "--print", dest="print_only", action="store_true", help="print the commands only"
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p
