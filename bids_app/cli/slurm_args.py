"""The SLURM options of the command line -> `SlurmConfig` (bids_app/run/slurm.py writes it).

A task runs the command line the user typed minus the SLURM options. Which tokens those are
is decided by the BIDS-App parser itself: each option token, with at most one value after it,
is parsed alone, and it is a SLURM option exactly when what it sets is a SLURM option. So
prefixes (`--slurm-thr 2`), `--opt=value` and values that look like options are read the way
argparse reads them, and no copy of its rules can drift from it. The result is parsed again
and must give the same run minus the SLURM options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bids_app.cli.parser import BidsAppParser, bids_app_parser
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.run import slurm
from bids_app.run.config import SlurmConfig

_PLACEHOLDERS = ("_", "_", "_")  # bids_dir output_dir analysis_level: any text parses


class _ParseError(Exception):
    """A probe that does not parse alone (a value, a positional, an option missing its value)."""


def _raise(message: str) -> None:
    raise _ParseError(message)


def _probe_parser() -> BidsAppParser:
    """The BIDS-App parser, raising instead of printing usage and exiting."""
    parser = bids_app_parser()
    parser.error = _raise  # type: ignore[method-assign]
    return parser


def _parse(parser: BidsAppParser, tokens: Sequence[str]) -> dict:
    """argparse's own parse, without what the parser classes add after it (no output)."""
    return vars(argparse.ArgumentParser.parse_args(parser, list(tokens)))


def _changed(parser: BidsAppParser, tokens: Sequence[str], base: dict) -> set[str] | None:
    """The options `tokens` set when parsed alone (None: they do not parse alone)."""
    try:
        parsed = _parse(parser, [*_PLACEHOLDERS, *tokens])
    except _ParseError:
        return None
    return {dest for dest, value in parsed.items() if value != base[dest]}


def without_slurm_options(argv: Sequence[str]) -> list[str]:
    """`argv` without its SLURM options (each with its value); every other token as typed."""
    parser = _probe_parser()
    dests = set(parser.slurm_options)
    base = _parse(parser, _PLACEHOLDERS)
    kept: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--":  # everything after it is positional
            kept += argv[i:]
            break
        changed, end = None, i + 1
        for end in range(i + 1, min(i + 2, len(argv)) + 1):  # a SLURM option takes <= 1 value
            changed = _changed(parser, argv[i:end], base)
            if changed is not None:
                break
        if changed and changed <= dests:
            i = end
        else:
            kept.append(argv[i])
            i += 1
    _check_same_run(parser, argv, kept, dests)
    return kept


def _check_same_run(
    parser: BidsAppParser, argv: Sequence[str], kept: Sequence[str], dests: set[str]
) -> None:
    """The task line must parse to the typed run minus the SLURM options (else: a bug)."""
    full, got, base = (_parse(parser, t) for t in (argv, kept, _PLACEHOLDERS))
    expected = {k: (base[k] if k in dests else v) for k, v in full.items()}
    if got != expected:
        wrong = sorted(k for k in expected if expected[k] != got.get(k))
        raise RuntimeError(f"removing the SLURM options changed {', '.join(wrong)}: {kept}")


def slurm_config(args: argparse.Namespace) -> SlurmConfig | None:
    """The SLURM part of the run configuration; None when no script is asked for.

    SLURM options without `--slurm-script`, with the group level or with the option the
    script gives its tasks are usage errors (64).
    """
    options = bids_app_parser().slurm_options
    given = [
        option
        for dest, option in options.items()
        if dest != "slurm_script" and getattr(args, dest) not in (None, False)
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
            f"{slurm.TASK_OPTION} is set by the script for its tasks; not with --slurm-script",
        )
    container = args.container.expanduser().resolve() if args.container else None
    if container is not None and not container.is_file():
        raise UserError(ExitCode.USAGE, f"{container}: --container image not found")
    return SlurmConfig(
        script=args.slurm_script.expanduser().resolve(),
        task_argv=tuple(without_slurm_options(args.argv)),
        mem=args.slurm_mem or slurm.DEFAULT_MEM,
        time=args.slurm_time or slurm.DEFAULT_TIME,
        per_session=args.slurm_per_session,
        throttle=args.slurm_throttle,
        gpus=args.slurm_gpus,
        partition=args.slurm_partition,
        account=args.slurm_account,
        container=container,
        max_array=args.slurm_max_array or slurm.DEFAULT_MAX_ARRAY,
        # A GPU partition is not the group level's (it needs no GPU): the default one then.
        group_partition=args.slurm_group_partition
        or (None if args.slurm_gpus else args.slurm_partition),
        group_mem=args.slurm_group_mem or slurm.DEFAULT_GROUP_MEM,
        group_time=args.slurm_group_time or slurm.DEFAULT_GROUP_TIME,
    )
