"""Crash files: the full traceback of an unexpected error, kept beside the run log.

The console, the status table and the stamp get one line; the traceback a developer needs
goes to `output_dir/logs/crash-<UTC time>-<what>.txt` (fMRIPrep's `crash-*.txt` practice),
which that line names. An unexpected error is a bug or a library failure, not bad input, so
it is worth a report: the file says what ran on what. A full disk (or a read-only, failing
or over-quota one) is not a bug: it is exit 74 in one line naming the file, and no crash file.
"""

from __future__ import annotations

import errno
import platform
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bids_app import __version__
from bids_app.plumbing.atomic import write_text_atomic
from bids_app.plumbing.errors import ExitCode, UserError, one_line


def write_crash_file(
    logs_dir: Path, what: str, error: BaseException, context: Mapping[str, object] | None = None
) -> Path:
    """Write `logs_dir/crash-<UTC time>-<what>.txt` with `context` and the traceback.

    Raises OSError when the folder cannot be written.
    """
    now = datetime.now(UTC)
    path = Path(logs_dir) / f"crash-{now.strftime('%Y%m%dT%H%M%SZ')}-{what}.txt"
    lines = [
        f"spineseg {__version__} crash report",
        f"time: {now.isoformat(timespec='seconds')}",
        f"python: {sys.version.split()[0]} on {platform.platform()}",
        f"command: {' '.join(sys.argv)}",
        *(f"{key}: {value}" for key, value in (context or {}).items()),
        "",
        *traceback.format_exception(error),
    ]
    write_text_atomic(path, "\n".join(line.rstrip("\n") for line in lines) + "\n")
    return path


def write_crash_file_somewhere(
    output_dir: Path | None, what: str, error: BaseException
) -> Path | None:
    """The crash file in `output_dir/logs` when output_dir exists (a command that never
    created it must not start to), else in the temporary folder; None when neither works."""
    folders = [Path(tempfile.gettempdir())]
    if output_dir is not None and Path(output_dir).is_dir():
        folders.insert(0, Path(output_dir) / "logs")
    for folder in folders:
        try:
            return write_crash_file(folder, what, error)
        except OSError:
            continue
    return None


# The storage failed, not SpineSeg: no space, no quota left, read-only, I/O error, too large.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def disk_error(error: BaseException, where: Path | None = None) -> UserError | None:
    """Exit 74 naming the file, when `error` (or what caused it) is the disk failing."""
    seen: BaseException | None = error
    visited: set[int] = set()  # an exception's context can lead back to itself
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in DISK_ERRNOS):
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
        if seen is not None and id(seen) in visited:
            return None
    if not isinstance(seen, OSError):
        return None
    name = seen.filename or where or "output"
    return UserError(ExitCode.IO_ERROR, f"{name}: cannot write ({seen.strerror or seen})")


def crash_error(error: BaseException, output_dir: Path | None, what: str) -> UserError:
    """The one-line error for an unexpected exception: exit 74 when the disk failed (see
    `disk_error`), else exit 70 with its traceback saved."""
    full = disk_error(error, output_dir)
    if full is not None:
        return full
    path = write_crash_file_somewhere(output_dir, what, error)
    where = f"traceback in {path}" if path else "no crash file could be written"
    return UserError(
        ExitCode.SOFTWARE,
        f"unexpected {one_line(error, with_type=True)} (a SpineSeg bug; {where}; please report it)",
    )


@contextmanager
def crash_reports(output_dir: Path, what: str) -> Iterator[None]:
    """Turn an unexpected exception in the block into `crash_error`; user errors pass.

    Entered inside the run log, so the log gets the one line that names the crash file.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise crash_error(e, output_dir, what) from e
