"""The BIDS-App command line: checks, the run configuration, dispatch to a level.

Everything here happens before any work: paths and labels are checked, the argparse
namespace becomes a frozen `RunConfig`, and the level's runner (`bids_app.run.participant`,
`bids_app.run.group`) gets only that object.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_app.bids import discovery as disc
from bids_app.cli.parser import LEVELS
from bids_app.cli.slurm_args import slurm_config
from bids_app.corrections import finding as corrections
from bids_app.engine.options import SegmentOptions
from bids_app.plumbing.atomic import remove_stale_temps
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.run import slurm
from bids_app.run.config import Resources, RunConfig, SelectionConfig
from bids_app.run.group import run_group
from bids_app.run.participant import run_participant
from bids_app.run.segmentation import EngineFactory, default_engine_factory

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checks


LABEL_FILE_SUFFIXES = (".txt", ".tsv")


def label_file(value: str) -> Path | None:
    """The file a label value names, when the user says it is one: `@FILE`, or a name ending
    in .txt or .tsv (no label has a dot). Never because a file of that name happens to
    exist: a label is a label even where a file is called like it."""
    if value.startswith("@"):
        return Path(value[1:])
    if value.lower().endswith(LABEL_FILE_SUFFIXES):
        return Path(value)
    return None


def read_label_file(path: Path, option: str) -> list[str]:
    """One label per line (first column; a `participant_id`/`session_id` header and `#`
    comments are skipped), so participants.tsv can be passed as is."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(ExitCode.USAGE, f"{option} {path}: cannot read ({e.strerror or e})") from e
    tokens = [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]
    tokens = [t for t in tokens if t not in ("participant_id", "session_id")]
    if not tokens:
        raise UserError(ExitCode.USAGE, f"{path}: {option} file holds no label")
    return tokens


def expand_labels(values: Sequence[str] | None, prefix: str, option: str) -> list[str] | None:
    """Labels from the command line: strip `sub-`/`ses-`, read label files (see
    `label_file`), check, deduplicate."""
    if not values:
        return None
    labels: list[str] = []
    for value in values:
        path = label_file(value)
        tokens = read_label_file(path, option) if path is not None else [value]
        for token in tokens:
            label = token.removeprefix(prefix)
            if not disc.LABEL_RE.match(label):
                raise UserError(
                    ExitCode.USAGE,
                    f"{option} {token!r}: a label is letters and digits only "
                    f"(with or without '{prefix}'); a file of labels is given as @FILE or "
                    "a name ending in .txt or .tsv",
                )
            if label not in labels:
                labels.append(label)
    return labels


@dataclass(frozen=True)
class Paths:
    bids_dir: Path
    output_dir: Path
    work_dir: Path | None


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None, level: str) -> Paths:
    """Refuse path combinations that would write into the input, before any work.

    See docs/bids-conventions.md §7.1.
    """
    bids_dir, output_dir = bids_dir.expanduser().resolve(), output_dir.expanduser().resolve()
    work = work_dir.expanduser().resolve() if work_dir else None
    suggestion = bids_dir / "derivatives" / "spineseg"
    if output_dir == bids_dir:
        raise UserError(
            ExitCode.USAGE, f"{output_dir}: output_dir is the input dataset; use {suggestion}"
        )
    if output_dir in bids_dir.parents:
        raise UserError(
            ExitCode.USAGE,
            f"{output_dir}: output_dir contains the input dataset {bids_dir} (the outputs "
            f"would not be a valid derivatives dataset); use {suggestion} or a folder outside it",
        )
    if bids_dir in output_dir.parents and output_dir.parent != bids_dir / "derivatives":
        raise UserError(
            ExitCode.USAGE,
            f"{output_dir}: inside the input dataset only derivatives/<name> is allowed "
            f"(e.g. {suggestion})",
        )
    if work is not None and (work == bids_dir or bids_dir in work.parents):
        raise UserError(
            ExitCode.USAGE, f"{work}: the work dir must not be inside the input dataset"
        )
    if level == "participant":
        if not bids_dir.is_dir():
            raise UserError(ExitCode.USAGE, f"{bids_dir}: bids_dir is not a folder")
        description = bids_dir / "dataset_description.json"
        try:
            data = json.loads(description.read_text())
        except OSError as e:
            raise UserError(
                ExitCode.VALIDATION,
                f"{description}: cannot read ({e.strerror or e}); is this a BIDS dataset?",
            ) from e
        except ValueError as e:
            raise UserError(ExitCode.VALIDATION, f"{description}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise UserError(ExitCode.VALIDATION, f"{description}: must be a JSON object")
    return Paths(bids_dir, output_dir, work)


def build_config(args: argparse.Namespace, paths: Paths) -> RunConfig:
    """The one place where the command line becomes the typed, frozen run configuration."""
    # Labels typed one by one must exist; those read from a file (participants.tsv) may list
    # subjects without an anatomical image (MEG's sub-emptyroom), which are then skipped.
    values = args.participant_label or []
    inline = [v for v in values if label_file(v) is None]
    participants = expand_labels(inline, "sub-", "--participant-label")
    listed = expand_labels([v for v in values if v not in inline], "sub-", "--participant-label")
    sessions = expand_labels(args.session_label, "ses-", "--session-label")
    return RunConfig(
        bids_dir=paths.bids_dir,
        output_dir=paths.output_dir,
        level=args.analysis_level,
        work_dir=paths.work_dir,
        selection=SelectionConfig(
            participants=tuple(participants) if participants else None,
            listed_participants=tuple(listed) if listed else None,
            sessions=tuple(sessions) if sessions else None,
            suffixes=tuple(args.suffix) if args.suffix else None,
            filter_file=args.bids_filter_file,
            localizer_suffix=args.localizer_suffix,
            localizer_query=args.localizer,
            skip_validation=args.skip_bids_validation,
            frozen=args.frozen_selection,
        ),
        options=SegmentOptions(
            step1_only=args.step1_only,
            iso=args.iso,
            assume_top_disc=args.assume_top_disc,
            tile_step=args.tile_step,
            precision=args.precision,
        ),
        resources=Resources(
            devices=args.device,
            nprocs=args.nprocs,
            omp_nthreads=args.omp_nthreads,
            pipeline=args.pipeline == "on",
            in_flight=args.max_in_flight,
            cpu_workers=args.cpu_workers,
            mem_mb=args.mem_mb,
        ),
        weights=args.weights,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        reports_only=args.reports_only,
        quiet=args.quiet,
        dry_run=args.dry_run,
        ratings_dir=args.ratings_dir,
        corrections_dir=corrections_dir(args.corrections, paths),
        lesion_model=args.lesion_model,
        lesion_suffixes=tuple(args.lesion_suffix),
        slurm=slurm_config(args),
    )


def corrections_dir(value: str | None, paths: Paths) -> Path | None:
    """`--corrections`, or its default; never SpineSeg's own output folder (exit 64)."""
    try:
        return corrections.resolve_dir(value, paths.bids_dir, paths.output_dir)
    except ValueError as e:
        raise UserError(ExitCode.USAGE, f"--corrections: {e}") from e


def remove_killed_writers_temps(config: RunConfig) -> None:
    """Temp files left by writers killed with -9 (see `remove_stale_temps`): in the subjects
    this run works on (all of them without labels), logs/ and the top folder, so that each
    task of a large SLURM array does not walk every subject of the output."""
    out, sel = config.output_dir, config.selection
    labels = [*(sel.participants or ()), *(sel.listed_participants or ())]
    if config.level == "group" or not labels:
        removed = remove_stale_temps(out, recursive=True)
    else:
        folders = [out / "logs", *(out / f"sub-{label}" for label in labels)]
        removed = remove_stale_temps(out)
        removed += sum(remove_stale_temps(folder, recursive=True) for folder in folders)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)


def run_bids_app(
    args: argparse.Namespace, engine_factory: EngineFactory = default_engine_factory
) -> int:
    """Run the parsed BIDS-App command line; raises UserError for anything the user can fix."""
    if args.analysis_level not in LEVELS:
        raise UserError(
            ExitCode.BAD_LEVEL,
            f"analysis level {args.analysis_level!r}: must be one of {', '.join(LEVELS)}",
        )
    paths = check_paths(args.bids_dir, args.output_dir, args.work_dir, args.analysis_level)
    config = build_config(args, paths)
    if config.slurm is not None:
        return slurm.write_for_cli(config)
    if not config.dry_run and config.output_dir.is_dir():
        remove_killed_writers_temps(config)
    if config.level == "group":
        return run_group(config)
    return run_participant(config, engine_factory)
