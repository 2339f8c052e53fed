"""`spineseg` entry point (= run.py): subcommand dispatch, logging, exit codes.

Subcommands are recognised on the first argument before the BIDS-App parser sees the line,
so `spineseg bids_dir output_dir participant` keeps the exact BIDS-Apps form.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from bids_app.cli import parser as cli_parser
from bids_app.cli.app import run_bids_app
from bids_app.plumbing.crash import crash_error
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.plumbing.logs import console_logging
from bids_app.run.segmentation import EngineFactory, default_engine_factory


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM's time limit, `scancel`, `docker stop`): stop like Ctrl-C, so every
    `finally` runs and temporary files are removed; nothing half written looks finished."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` in the main thread for the length of the command."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(
    argv: Sequence[str] | None = None, *, engine_factory: EngineFactory = default_engine_factory
) -> int:
    """Run the command line; returns the exit code (see `spineseg --help`).

    Errors are one line: a UserError with its own code, anything else (a bug) exit 70 with
    the traceback in a crash file (`output_dir/logs/crash-*.txt`).

    `engine_factory(weights, devices, threads)` builds the segmentation engine (once per
    process); tests inject a fake one.
    """
    from bids_app.cli import tools

    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in cli_parser.SUBCOMMANDS else None
    parsers = {
        "segment": cli_parser.segment_parser,
        "weights": cli_parser.weights_parser,
        "phantoms": cli_parser.phantoms_parser,
        "review": cli_parser.review_parser,
        None: cli_parser.bids_app_parser,
    }
    runners = {
        "segment": lambda a: tools.run_segment(a, engine_factory),
        "weights": tools.run_weights,
        "phantoms": tools.run_phantoms,
        "review": tools.run_review,
        None: lambda a: run_bids_app(a, engine_factory),
    }
    try:
        args = parsers[command]().parse_args(args_list[1:] if command else args_list)
    except SystemExit as e:  # --help, --version and usage errors (64) end here
        return int(e.code or 0) if not isinstance(e.code, str) else ExitCode.USAGE
    with console_logging(args.verbose), stop_on_sigterm():
        try:
            return int(runners[command](args))
        except UserError as e:
            print(f"{cli_parser.PROG}: error: {e}", file=sys.stderr)
            return int(e.code)
        except Terminated:
            print(
                f"{cli_parser.PROG}: stopped by SIGTERM; finished images are kept, "
                "rerun to do the rest",
                file=sys.stderr,
            )
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            print(
                f"{cli_parser.PROG}: interrupted; finished images are kept, rerun to do the rest",
                file=sys.stderr,
            )
            return 130
        except Exception as e:  # a bug: one line here, the traceback in a crash file
            crash = crash_error(e, getattr(args, "output_dir", None), command or "spineseg")
            print(f"{cli_parser.PROG}: error: {crash}", file=sys.stderr)
            return int(crash.code)


if __name__ == "__main__":
    sys.exit(main())
