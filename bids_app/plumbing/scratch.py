"""The run's scratch folder: every temporary file of the run in one place that is removed at
the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_files_in(work_dir: Path | None) -> Iterator[Path]:
    """A scratch folder for the run, inside `work_dir` (-w) or the system's temporary folder,
    removed at the end; while the run lasts every temporary file goes there (Python's
    `tempfile`, and TMPDIR for the validator and libraries), so -w can put them on a node's
    local disk instead of a small /tmp."""
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="spineseg-", dir=work_dir) as folder:
        tempfile.tempdir = os.environ["TMPDIR"] = folder
        try:
            yield Path(folder)
        finally:
            tempfile.tempdir = saved[0]
            if saved[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[1]
