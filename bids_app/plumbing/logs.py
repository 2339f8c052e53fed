"""Console and per-run log file handling.

Progress and warnings go to stderr; the selection and the status table go to stdout (they are
the run's result, and scripts capture them); the run log in `output_dir/logs/` gets both.
Handlers are removed on exit so that repeated in-process runs (tests) do not stack them.

A log that cannot be written (a full disk, a closed pipe) never prints logging's
"--- Logging error ---" tracebacks: the run log stops at its first error and says so in one
warning when the run ends well; when the run stops, its own one-line error (exit 74 for a full
disk, from `main()`) is all the console gets. The console handlers stay silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

APP_LOGGER = "bids_app"
SUMMARY_LOGGER = "spineseg.summary"
_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _ConsoleHandler(logging.StreamHandler):
    """stderr/stdout: when they cannot be written there is nowhere left to say so."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _RunLogHandler(logging.FileHandler):
    """The run log: its first write error is kept (`broken`), later records are dropped."""

    broken: OSError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.broken is None:
            error = sys.exc_info()[1]
            self.broken = error if isinstance(error, OSError) else OSError(str(error))

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError) as e:  # the last flush failed: nothing more to save
            self.broken = self.broken or OSError(str(e))


@contextmanager
def console_logging(verbosity: int) -> Iterator[None]:
    """-v: debug messages of SpineSeg; -vv: also of the libraries (pybids, nnU-Net...)."""
    root, app, summary = (
        logging.getLogger(),
        logging.getLogger(APP_LOGGER),
        logging.getLogger(SUMMARY_LOGGER),
    )
    saved = (root.level, app.level, summary.level, summary.propagate, logging.raiseExceptions)
    logging.raiseExceptions = False  # also for handlers that libraries add: no tracebacks
    err = _ConsoleHandler(sys.stderr)
    err.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    out = _ConsoleHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(err)
    summary.addHandler(out)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    app.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    summary.setLevel(logging.INFO)
    summary.propagate = False
    try:
        yield
    finally:
        root.removeHandler(err)
        summary.removeHandler(out)
        for handler in list(summary.handlers):  # run-log handlers left by add_run_log
            summary.removeHandler(handler)
        root.level, app.level, summary.level, summary.propagate = saved[:4]
        logging.raiseExceptions = saved[4]


@contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Also write everything (and the summary) to `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    root, summary = logging.getLogger(), logging.getLogger(SUMMARY_LOGGER)
    root.addHandler(handler)
    summary.addHandler(handler)
    stopped = False
    try:
        yield path
    except Exception as e:  # the console gets it from main(); the log must have it too
        stopped = True
        record = logging.makeLogRecord(
            {"name": "spineseg", "levelno": logging.ERROR, "levelname": "ERROR", "msg": str(e)}
        )
        handler.handle(record)
        raise
    except BaseException:
        stopped = True
        raise
    finally:
        root.removeHandler(handler)
        summary.removeHandler(handler)
        handler.close()
        if handler.broken is not None and not stopped:  # else the run's error says why
            reason = handler.broken.strerror or handler.broken
            log.warning("%s: the run log could not be written (%s)", path, reason)


def say(*lines: str) -> None:
    """Print result lines to stdout and to the run log."""
    summary = logging.getLogger(SUMMARY_LOGGER)
    for line in lines:
        summary.info(line)
