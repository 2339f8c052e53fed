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
import logging
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
from bids_app.run.config import RunConfig, SlurmConfig

log = logging.getLogger(__name__)

# What a task adds to the command line; given by hand it would fight the script's values.
TASK_OPTION = "--frozen-selection"
DEFAULT_MEM, DEFAULT_TIME, DEFAULT_CPUS = "16G", "01:00:00", 4
DEFAULT_GROUP_MEM, DEFAULT_GROUP_TIME = "4G", "00:30:00"
DEFAULT_MAX_ARRAY = 1001  # SLURM's default MaxArraySize: indices 0..1000
LOG_DIR = Path("logs") / "slurm"
# Below these a task cannot use what it books: one whole-spine image holds about 1-2 GB on
# the 1 mm grid besides the networks, and every CPU beyond the first serves another image.
MIN_TASK_MB, MIN_MB_PER_CPU = 2048, 512

_MEM_RE = re.compile(r"^[1-9][0-9]*[KMGT]?$", re.IGNORECASE)
_TIME_RE = re.compile(r"^([0-9]+-[0-9]+(:[0-9]+){0,2}|[0-9]+(:[0-9]+){0,2})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+-]+$")
_MB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def slurm_mem(text: str) -> str:
    """A `--mem` value: a number with an optional K/M/G/T unit (MB without one)."""
    if not _MEM_RE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 16G or 8000M")
    return text.strip().upper()


def mem_mb(mem: str) -> int:
    """A `slurm_mem` value in MB, as SLURM counts (`--mem-mb` of the task)."""
    unit = mem[-1] if mem[-1].isalpha() else "M"
    number = int(mem[:-1] if mem[-1].isalpha() else mem)
    return max(1, int(number * _MB_PER_UNIT[unit]))


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


def check_request(config: RunConfig, opts: SlurmConfig) -> list[str]:
    """Refuse a request whose every task would fail (64); the warnings for one that books
    what its tasks cannot use."""
    devices = config.resources.devices
    cuda = [d for d in devices if d.startswith("cuda")]
    warnings = []
    if cuda and not opts.gpus:
        if opts.container is not None:
            raise UserError(
                ExitCode.USAGE,
                f"--device {','.join(devices)} with --container needs --slurm-gpus N: "
                "without a GPU request the image gets no GPU (no --nv) and every task exits 64",
            )
        warnings.append(
            f"--device {','.join(devices)} without --slurm-gpus: the tasks get a GPU only "
            "where the cluster does not confine GPUs to jobs that ask for them"
        )
    beyond = [d for d in cuda if ":" in d and opts.gpus and int(d.split(":")[1]) >= opts.gpus]
    if beyond:
        raise UserError(
            ExitCode.USAGE,
            f"--device {','.join(devices)} with --slurm-gpus {opts.gpus}: SLURM numbers a "
            f"task's GPUs from cuda:0, so {beyond[0]} does not exist in any task; use "
            "--device cuda (every GPU of the task) or ask for more GPUs",
        )
    if opts.gpus and all(d == "cpu" for d in devices):
        warnings.append(
            f"--device cpu with --slurm-gpus {opts.gpus}: every task books {opts.gpus} GPU(s) "
            "it leaves idle; drop --slurm-gpus or use --device cuda"
        )
    cpus = config.resources.nprocs or DEFAULT_CPUS
    total = mem_mb(opts.mem)
    if total < MIN_TASK_MB or total < cpus * MIN_MB_PER_CPU:
        warnings.append(
            f"--slurm-mem {opts.mem} for {cpus} CPU(s): below {MIN_TASK_MB} MB per task or "
            f"{MIN_MB_PER_CPU} MB per CPU, images wait for memory (or fail as too large) while "
            "the CPUs idle; raise --slurm-mem or lower --nprocs"
        )
    return warnings


# ---------------------------------------------------------------------------------------------
# The scripts


@dataclass(frozen=True)
class ScriptSet:
    """The files written for one submission and the tasks of each array."""

    arrays: list[Path]  # one array script per MaxArraySize tasks, submitted one by one
    group: Path
    selection: Path
    tasks: list[list[tuple[str, str | None]]]  # per array script

    def submit_lines(self) -> list[str]:
        """The commands that submit the arrays and then the group level (afterany)."""
        if len(self.arrays) == 1:
            names = ["array"]
        else:
            names = [f"array{i}" for i in range(1, len(self.arrays) + 1)]
        lines = [
            f"{name}=$(sbatch --parsable {shlex.quote(str(path))})"
            for name, path in zip(names, self.arrays, strict=True)
        ]
        after = ":".join(f'"${name}"' for name in names)
        return [*lines, f"sbatch --dependency=afterany:{after} {shlex.quote(str(self.group))}"]


def script_paths(script: Path) -> tuple[Path, Path]:
    """The group script and the frozen selection, named after the array script."""
    stem = script.name.removesuffix(".sh")
    return script.with_name(f"{stem}_group.sh"), script.with_name(f"{stem}_selection.json")


def part_path(script: Path, part: int) -> Path:
    """Array script number `part` (1 = `script` itself) when the tasks need several."""
    if part == 1:
        return script
    return script.with_name(f"{script.name.removesuffix('.sh')}_part{part}.sh")


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
    opts: SlurmConfig, config: RunConfig, selection_file: Path, cwd: Path, gpus: bool
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


def _sbatch_lines(partition: str | None, account: str | None, cwd: Path, log: str) -> list[str]:
    lines = [f"#SBATCH --partition={partition}"] if partition else []
    if account:
        lines.append(f"#SBATCH --account={account}")
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
    opts: SlurmConfig,
    tasks: Sequence[tuple[str, str | None]],
    cwd: Path,
    part: tuple[int, int] = (1, 1),
) -> str:
    """An array job: task i runs participant tasks[i] (and its session).

    `part` (number, count): which of the array scripts this is when the selection needs more
    tasks than one array may hold (`opts.max_array`).
    """
    group, selection_file = script_paths(opts.script)
    script = part_path(opts.script, part[0])
    unit = "participant x session" if opts.per_session else "participant"
    throttle = f"%{opts.throttle}" if opts.throttle else ""
    cpus = config.resources.nprocs or DEFAULT_CPUS
    which = f" (array {part[0]} of {part[1]})" if part[1] > 1 else ""
    head = [
        "#!/bin/bash",
        f"# SpineSeg {__version__}, participant level{which}: {len(tasks)} array task(s), "
        f"one per {unit}.",
        "# Submit; the group level starts when every task has ended, failed or not:",
    ]
    if part[1] == 1:
        head += [
            f"#   array=$(sbatch --parsable {shlex.quote(str(script))})",
            f'#   sbatch --dependency=afterany:"$array" {shlex.quote(str(group))}',
        ]
    else:
        head.append(
            f"#   every array script, then the group level after all of them (see {group.name})"
        )
    head += [
        "#SBATCH --job-name=spineseg",
        f"#SBATCH --array=0-{len(tasks) - 1}{throttle}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --mem={opts.mem}",
        f"#SBATCH --time={opts.time}",
    ]
    if opts.gpus:  # accepted alone by every SLURM (--gpus-per-task needs --ntasks since 23.11)
        head.append(f"#SBATCH --gres=gpu:{opts.gpus}")
    head += _sbatch_lines(
        opts.partition, opts.account, cwd, str(config.output_dir / LOG_DIR / "%x_%A_%a.out")
    )
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
    if config.resources.mem_mb is None:  # a container's --cleanenv hides SLURM's variables
        extra.append(f'--mem-mb "${{SLURM_MEM_PER_NODE:-{mem_mb(opts.mem)}}}"')
    program = _command_lines(opts, config, selection_file, cwd, bool(opts.gpus))
    command = ["exec " + program[0], *program[1:], *_option_lines(opts.task_argv), *extra]
    return "\n".join([*head, *body, _continued(command)]) + "\n"


def group_script(config: RunConfig, opts: SlurmConfig, cwd: Path, submit: Sequence[str]) -> str:
    """The group level, to be submitted with an `afterany` dependency on the array(s)."""
    _, selection_file = script_paths(opts.script)
    head = [
        "#!/bin/bash",
        f"# SpineSeg {__version__}, group level: summarises every image of the output folder,",
        "# including the failed ones. Submit after the array(s):",
        *(f"#   {line}" for line in submit),
        "#SBATCH --job-name=spineseg-group",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --mem={opts.group_mem}",
        f"#SBATCH --time={opts.group_time}",
        *_sbatch_lines(
            opts.group_partition,
            opts.account,
            cwd,
            str(config.output_dir / LOG_DIR / "%x_%j.out"),
        ),
        "set -euo pipefail",
    ]
    program = _command_lines(opts, config, selection_file, cwd, gpus=False)
    paths = shlex.join([str(config.bids_dir), str(config.output_dir), "group"])
    command = ["exec " + program[0], *program[1:], paths]
    return "\n".join([*head, _continued(command)]) + "\n"


def _chunks(
    tasks: Sequence[tuple[str, str | None]], size: int
) -> list[list[tuple[str, str | None]]]:
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)] or [[]]


def _remove_stale_parts(script: Path, keep: int) -> None:
    """Array scripts of an earlier, larger submission that this one does not rewrite."""
    part = keep + 1
    while (path := part_path(script, part)).is_file():
        if path.read_text(errors="replace").startswith("#!/bin/bash\n# SpineSeg "):
            path.unlink()
        part += 1


def write_scripts(
    config: RunConfig, selection: disc.Selection, opts: SlurmConfig, cwd: Path
) -> ScriptSet:
    """Freeze the selection and write the array script(s) and the group script (executable);
    the log folder is created too, because SLURM does not create the folder of `--output`."""
    from bids_app.plumbing.atomic import make_dir

    group, selection_file = script_paths(opts.script)
    parts = _chunks(array_tasks(selection, opts.per_session), opts.max_array)
    arrays = [part_path(opts.script, i) for i in range(1, len(parts) + 1)]
    written = ScriptSet(arrays, group, selection_file, parts)
    make_dir(opts.script.parent, "script folder")
    make_dir(config.output_dir / LOG_DIR, "SLURM log folder")
    try:
        disc.save_selection(selection, config.bids_dir, selection_file)
        for i, (path, tasks) in enumerate(zip(arrays, parts, strict=True), start=1):
            text = array_script(config, opts, tasks, cwd, (i, len(parts)))
            write_text_atomic(path, text)
        write_text_atomic(group, group_script(config, opts, cwd, written.submit_lines()))
        for script in (*arrays, group):
            script.chmod(script.stat().st_mode | 0o111)
        _remove_stale_parts(opts.script, len(parts))
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{e.filename or opts.script}: cannot write ({e.strerror or e})"
        ) from e
    return written


def write_for_cli(config: RunConfig) -> int:
    """`--slurm-script`: check the request, select, print the selection, write the scripts
    and how to submit them."""
    from bids_app.run.selection import select

    opts = config.slurm
    if opts is None:
        raise ValueError("write_for_cli needs config.slurm")
    warnings = check_request(config, opts)
    selection = select(config)
    say(*selection.describe())
    written = write_scripts(config, selection, opts, Path.cwd())
    unit = "participant x session" if opts.per_session else "participant"
    say("")
    for path, tasks in zip(written.arrays, written.tasks, strict=True):
        say(f"wrote {path} ({len(tasks)} array task(s), one per {unit})")
    if len(written.arrays) > 1:
        total = sum(map(len, written.tasks))
        say(f"  ({total} tasks: more than one array may hold, --slurm-max-array {opts.max_array})")
    group_where = opts.group_partition or "the default partition"
    say(
        f"wrote {written.group} (group level, {group_where})",
        f"wrote {written.selection} (the selected images; tasks do not re-index the dataset)",
        "submit with:",
        *(f"  {line}" for line in written.submit_lines()),
        f"task logs: {config.output_dir / LOG_DIR}",
    )
    for warning in warnings:
        log.warning("%s", warning)
    return ExitCode.OK
