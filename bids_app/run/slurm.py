"""SLURM array scripts for the participant level: one task per participant (or session).

`spineseg BIDS OUT participant --slurm-script FILE [options]` selects the images once (pybids),
freezes that selection into a JSON file next to FILE, and writes FILE (the array job) and a
group-level script; nothing is segmented. Each task runs the command line the user typed,
minus the SLURM options, plus its own participant (and session) and the frozen selection. So
a task computes what a local run of that participant would, without re-indexing the dataset
on every node, and a resubmitted task skips what its stamps say is done.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_app import __version__
from bids_app.bids import discovery as disc
from bids_app.plumbing.atomic import write_text_atomic
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.plumbing.logs import say
from bids_app.run.config import RunConfig

# Options of the "SLURM" group (cli/parser.py) -> how many values each takes. They shape the
# script, never a task, so they are the only tokens removed from the tasks' command line.
SLURM_OPTIONS: dict[str, int] = {
    "--slurm-script": 1,
    "--slurm-per-session": 0,
    "--slurm-throttle": 1,
    "--slurm-mem": 1,
    "--slurm-time": 1,
    "--slurm-gpus": 1,
    "--slurm-partition": 1,
    "--slurm-account": 1,
    "--container": 1,
}
# What a task adds to the command line; given by hand it would fight the script's values.
TASK_OPTION = "--frozen-selection"
DEFAULT_MEM, DEFAULT_TIME, DEFAULT_CPUS = "16G", "01:00:00", 4
GROUP_RESOURCES = ("--cpus-per-task=1", "--mem=4G", "--time=00:30:00")
LOG_DIR = Path("logs") / "slurm"

_MEM_RE = re.compile(r"^[1-9][0-9]*[KMGT]?$", re.IGNORECASE)
_TIME_RE = re.compile(r"^([0-9]+-[0-9]+(:[0-9]+){0,2}|[0-9]+(:[0-9]+){0,2})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+-]+$")


def slurm_mem(text: str) -> str:
    """A `--mem` value: a number with an optional K/M/G/T unit (MB without one)."""
    if not _MEM_RE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 16G or 8000M")
    return text.strip().upper()


def slurm_time(text: str) -> str:
    """A `--time` value in one of SLURM's forms (MM, HH:MM:SS, D-HH, D-HH:MM:SS...)."""
    if not _TIME_RE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a time such as 02:00:00 or 1-00")
    return text.strip()


def slurm_name(text: str) -> str:
    """A partition or account name (or a comma list): nothing that could break the script."""
    if not _NAME_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: letters, digits, '_', '.', '-', '+' and commas only"
        )
    return text


@dataclass(frozen=True)
class SlurmOptions:
    """What the scripts ask SLURM for, and how a task runs (local install or an image)."""

    script: Path
    per_session: bool = False
    throttle: int | None = None
    mem: str = DEFAULT_MEM
    time: str = DEFAULT_TIME
    gpus: int | None = None
    partition: str | None = None
    account: str | None = None
    container: Path | None = None


def options_from_args(args: argparse.Namespace) -> SlurmOptions | None:
    """The SLURM options of a parsed command line, or None when no script is asked for."""
    given = [
        name
        for name in SLURM_OPTIONS
        if name != "--slurm-script"
        and getattr(args, name.lstrip("-").replace("-", "_")) not in (None, False)
    ]
    if args.slurm_script is None:
        if given:
            raise UserError(ExitCode.USAGE, f"{given[0]} only goes with --slurm-script FILE")
        return None
    if args.analysis_level != "participant":
        raise UserError(
            ExitCode.USAGE,
            "--slurm-script writes the participant-level array (and its group script); "
            "use it with the participant level",
        )
    if args.frozen_selection is not None:
        raise UserError(
            ExitCode.USAGE,
            f"{TASK_OPTION} is set by the script for its tasks; not with --slurm-script",
        )
    container = args.container.expanduser().resolve() if args.container else None
    if container is not None and not container.is_file():
        raise UserError(ExitCode.USAGE, f"{container}: --container image not found")
    return SlurmOptions(
        script=args.slurm_script.expanduser().resolve(),
        per_session=args.slurm_per_session,
        throttle=args.slurm_throttle,
        mem=args.slurm_mem or DEFAULT_MEM,
        time=args.slurm_time or DEFAULT_TIME,
        gpus=args.slurm_gpus,
        partition=args.slurm_partition,
        account=args.slurm_account,
        container=container,
    )


def strip_slurm_options(argv: Sequence[str]) -> list[str]:
    """The command line without the SLURM options (`--opt value`, `--opt=value`, or an
    unambiguous prefix as argparse accepts it); every other token is kept as typed."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, inline = token.split("=", 1)[0], "=" in token
        matches = [o for o in SLURM_OPTIONS if o == name] or [
            o
            for o in SLURM_OPTIONS
            if name.startswith("--") and len(name) > 2 and o.startswith(name)
        ]
        if len(matches) != 1:
            kept.append(token)
            continue
        if SLURM_OPTIONS[matches[0]] and not inline:
            next(tokens, None)
    return kept


# ---------------------------------------------------------------------------------------------
# The scripts


@dataclass(frozen=True)
class ScriptSet:
    """The files written for one submission and the tasks of the array."""

    array: Path
    group: Path
    selection: Path
    tasks: list[tuple[str, str | None]]


def script_paths(script: Path) -> tuple[Path, Path]:
    """The group script and the frozen selection, named after the array script."""
    stem = script.name.removesuffix(".sh")
    return script.with_name(f"{stem}_group.sh"), script.with_name(f"{stem}_selection.json")


def array_tasks(selection: disc.Selection, per_session: bool) -> list[tuple[str, str | None]]:
    """(participant, session) per task; session None = all of the participant's images."""
    if per_session:
        return selection.sessions
    return [(subject, None) for subject in selection.subjects]


def local_command() -> list[str]:
    """The `spineseg` of this installation (beside its Python), else `python -m`."""
    beside = Path(sys.executable).parent / "spineseg"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "bids_app.cli.main"]


def container_binds(config: RunConfig, selection_file: Path, cwd: Path) -> list[str]:
    """`-B` values binding every folder the run reads or writes at its own path.

    Paths then mean the same inside and outside the image, so the options pass through
    unchanged; the submission folder is bound read-only for relative paths, parents
    before children so that a read-write output folder inside it stays writable.
    """
    sel = config.selection
    modes: dict[Path, str] = {config.bids_dir: "ro", selection_file.parent: "ro"}
    if cwd != Path(cwd.anchor):  # never the whole host
        modes.setdefault(cwd, "ro")
    inline = sel.localizer_query and sel.localizer_query.lstrip().startswith("{")
    for path in (sel.filter_file, None if inline else sel.localizer_query, config.weights):
        candidate = Path(path).expanduser().resolve() if path else None
        if candidate is not None and candidate.exists():
            folder = candidate if candidate.is_dir() else candidate.parent
            modes.setdefault(folder, "ro")
    for path in (config.output_dir, config.work_dir):
        if path is not None:
            modes[path] = "rw"
    ordered = sorted(modes.items(), key=lambda item: (len(item[0].parts), str(item[0])))
    binds = [f"{p}:{p}:{mode}" if mode == "ro" else f"{p}:{p}" for p, mode in ordered]
    return [*binds, "${SLURM_TMPDIR:-/tmp}:/tmp"]


def _command_lines(
    opts: SlurmOptions, config: RunConfig, selection_file: Path, cwd: Path, gpus: bool
) -> list[str]:
    """The program part of a task or group command: `spineseg` or `apptainer run ... SIF`."""
    if opts.container is None:
        return [shlex.join(local_command())]
    lines = ["apptainer run --cleanenv --containall"]
    if gpus:
        lines += [
            "--nv",
            '${CUDA_VISIBLE_DEVICES:+--env CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"}',
        ]
    lines.append(f"--pwd {shlex.quote(str(cwd))}")
    lines += [
        f'-B "{b}"' if "$" in b else f"-B {shlex.quote(b)}"
        for b in container_binds(config, selection_file, cwd)
    ]
    lines.append(shlex.quote(str(opts.container)))
    return lines


def _sbatch_lines(opts: SlurmOptions, cwd: Path, log: str) -> list[str]:
    lines = [f"#SBATCH --partition={opts.partition}"] if opts.partition else []
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    return [*lines, f"#SBATCH --chdir={cwd}", f"#SBATCH --output={log}"]


def _continued(lines: Sequence[str]) -> str:
    """One shell command over several lines."""
    return " \\\n    ".join(lines)


def _option_lines(argv: Sequence[str]) -> list[str]:
    """The command line, quoted, one option and its values per line (readable in the script)."""
    lines: list[list[str]] = [[]]
    for token in argv:
        if token.startswith("-") and lines[-1]:
            lines.append([])
        lines[-1].append(token)
    return [shlex.join(line) for line in lines if line]


def array_script(
    config: RunConfig,
    opts: SlurmOptions,
    tasks: Sequence[tuple[str, str | None]],
    task_argv: Sequence[str],
    cwd: Path,
) -> str:
    """The array job: task i runs participant tasks[i] (and its session)."""
    group, selection_file = script_paths(opts.script)
    unit = "participant x session" if opts.per_session else "participant"
    throttle = f"%{opts.throttle}" if opts.throttle else ""
    cpus = config.resources.nprocs or DEFAULT_CPUS
    head = [
        "#!/bin/bash",
        f"# SpineSeg {__version__}, participant level: {len(tasks)} array task(s), one per {unit}.",
        "# Submit; the group level starts when every task has ended, failed or not:",
        f"#   array=$(sbatch --parsable {shlex.quote(str(opts.script))})",
        f'#   sbatch --dependency=afterany:"$array" {shlex.quote(str(group))}',
        "#SBATCH --job-name=spineseg",
        f"#SBATCH --array=0-{len(tasks) - 1}{throttle}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --mem={opts.mem}",
        f"#SBATCH --time={opts.time}",
    ]
    if opts.gpus:
        head.append(f"#SBATCH --gpus-per-task={opts.gpus}")
    head += _sbatch_lines(opts, cwd, str(config.output_dir / LOG_DIR / "%x_%A_%a.out"))
    body = [
        "set -euo pipefail",
        ': "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch}"',
        f"# Task i runs participants[i]{' in sessions[i]' if opts.per_session else ''}; "
        f"the images are frozen in {selection_file.name}.",
        f"participants=({' '.join(sub for sub, _ in tasks)})",
        'sub="${participants[$SLURM_ARRAY_TASK_ID]}"',
    ]
    extra = [f"{TASK_OPTION} {shlex.quote(str(selection_file))}", '--participant-label "$sub"']
    if opts.per_session:
        body += [
            f"sessions=({' '.join(shlex.quote(ses or '') for _, ses in tasks)})",
            'ses="${sessions[$SLURM_ARRAY_TASK_ID]}"',
        ]
        extra.append('${ses:+--session-label "$ses"}')
    if config.resources.nprocs is None:
        extra.append('--nprocs "$SLURM_CPUS_PER_TASK"')
    program = _command_lines(opts, config, selection_file, cwd, bool(opts.gpus))
    command = ["exec " + program[0], *program[1:], *_option_lines(task_argv), *extra]
    return "\n".join([*head, *body, _continued(command)]) + "\n"


def group_script(config: RunConfig, opts: SlurmOptions, cwd: Path) -> str:
    """The group level, to be submitted with an `afterany` dependency on the array."""
    _, selection_file = script_paths(opts.script)
    head = [
        "#!/bin/bash",
        f"# SpineSeg {__version__}, group level: summarises every image of the output folder,",
        "# including the failed ones. Submit after the array (see its header).",
        "#SBATCH --job-name=spineseg-group",
        *(f"#SBATCH {r}" for r in GROUP_RESOURCES),
        *_sbatch_lines(opts, cwd, str(config.output_dir / LOG_DIR / "%x_%j.out")),
        "set -euo pipefail",
    ]
    program = _command_lines(opts, config, selection_file, cwd, gpus=False)
    paths = shlex.join([str(config.bids_dir), str(config.output_dir), "group"])
    command = ["exec " + program[0], *program[1:], paths]
    return "\n".join([*head, _continued(command)]) + "\n"


def write_scripts(
    config: RunConfig,
    selection: disc.Selection,
    opts: SlurmOptions,
    argv: Sequence[str],
    cwd: Path,
) -> ScriptSet:
    """Freeze the selection and write both scripts (executable); the log folder is created
    too, because SLURM does not create the folder of `--output`."""
    from bids_app.plumbing.atomic import make_dir

    group, selection_file = script_paths(opts.script)
    tasks = array_tasks(selection, opts.per_session)
    make_dir(opts.script.parent, "script folder")
    make_dir(config.output_dir / LOG_DIR, "SLURM log folder")
    try:
        disc.save_selection(selection, config.bids_dir, selection_file)
        task_argv = strip_slurm_options(argv)
        write_text_atomic(opts.script, array_script(config, opts, tasks, task_argv, cwd))
        write_text_atomic(group, group_script(config, opts, cwd))
        for script in (opts.script, group):
            script.chmod(script.stat().st_mode | 0o111)
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{e.filename or opts.script}: cannot write ({e.strerror or e})"
        ) from e
    return ScriptSet(opts.script, group, selection_file, tasks)


def write_for_cli(config: RunConfig, opts: SlurmOptions, argv: Sequence[str]) -> int:
    """`--slurm-script`: select, print the selection, write the scripts and how to submit."""
    from bids_app.run.selection import select

    selection = select(config)
    say(*selection.describe())
    written = write_scripts(config, selection, opts, argv, Path.cwd())
    unit = "participant x session" if opts.per_session else "participant"
    say(
        "",
        f"wrote {written.array} ({len(written.tasks)} array task(s), one per {unit})",
        f"wrote {written.group} (group level)",
        f"wrote {written.selection} (the selected images; tasks do not re-index the dataset)",
        "submit with:",
        f"  array=$(sbatch --parsable {shlex.quote(str(written.array))})",
        f'  sbatch --dependency=afterany:"$array" {shlex.quote(str(written.group))}',
        f"task logs: {config.output_dir / LOG_DIR}",
    )
    return ExitCode.OK
