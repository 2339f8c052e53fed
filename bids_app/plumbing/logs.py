"""Console and per-run log file handling.

Progress and warnings go to stderr; the selection and the status table go to stdout (they are
the run's result, and scripts capture them); the run log in `output_dir/logs/` gets both.
Handlers are removed on exit so that repeated in-process runs (tests) do not stack them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APP_LOGGER = "bids_app"
SUMMARY_LOGGER = "spineseg.summary"
_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextmanager
def console_logging(verbosity: int) -> Iterator[None]:
    """-v: debug messages of SpineSeg; -vv: also of the libraries (pybids, nnU-Net...)."""
    root, app, summary = (
        logging.getLogger(),
        logging.getLogger(APP_LOGGER),
        logging.getLogger(SUMMARY_LOGGER),
    )
    saved = (root.level, app.level, summary.level, summary.propagate)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    out = logging.StreamHandler(sys.stdout)
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
        root.level, app.level, summary.level, summary.propagate = saved


@contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Also write everything (and the summary) to `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    root, summary = logging.getLogger(), logging.getLogger(SUMMARY_LOGGER)
    root.addHandler(handler)
    summary.addHandler(handler)
    try:
        yield path
    except Exception as e:  # the console gets it from main(); the log must have it too
        record = logging.makeLogRecord(
            {"name": "spineseg", "levelno": logging.ERROR, "levelname": "ERROR", "msg": str(e)}
        )
        handler.handle(record)
        raise
    finally:
        root.removeHandler(handler)
        summary.removeHandler(handler)
        handler.close()


def say(*lines: str) -> None:
    """Print result lines to stdout and to the run log."""
    summary = logging.getLogger(SUMMARY_LOGGER)
    for line in lines:
        summary.info(line)
