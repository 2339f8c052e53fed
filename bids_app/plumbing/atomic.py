"""Atomic and parallel-safe file writing, for every layer (outputs, stamps, weight manifests).

A killed run must never leave a file that looks finished, and several participant jobs may
write into one output_dir at once (BIDS-Apps allow parallel participant runs), so every write
goes to a hidden temp file in the target folder and is renamed into place. Files shared by
all runs (dataset_description.json, LUTs, ...) are also serialised with a lock and left alone
when their content is already right, so concurrent runs neither race nor churn them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import nibabel as nib
from filelock import FileLock

from bids_app.plumbing.errors import ExitCode, UserError

LOCK_TIMEOUT_S = 600.0
LOCK_NAME = ".spineseg.lock"  # one hidden lock per folder of shared files


@cache
def _file_mode() -> int:
    """Mode a plain `open()` would give (mkstemp makes 0600, unreadable for the group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a hidden temp path beside `path`; rename it onto `path` only on success.

    `suffix` is appended to the temp name so that writers choosing a format by extension
    (nibabel: `.nii.gz` means gzip) behave as for the final name. Dot-files are pruned by the
    BIDS validator and by pybids, so a temp file left by a killed run is never mistaken for an
    output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def json_text(data: object) -> str:
    """The one JSON layout used for every file written (stable, so equal data = equal bytes)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, data: object) -> None:
    write_text_atomic(path, json_text(data))


def nifti_suffix(path: Path) -> str:
    name = Path(path).name
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def save_nifti_atomic(img: nib.Nifti1Image, path: Path) -> None:
    """Save `img` as is (grid and dtype untouched) under `path`, atomically."""
    with atomic_path(path, suffix=nifti_suffix(path)) as tmp:
        nib.save(img, tmp)


def write_shared(path: Path, data: bytes) -> bool:
    """Write a file shared by parallel runs; True when its content changed.

    The lock makes read-compare-replace one step, so two runs with different content cannot
    interleave, and identical content is not rewritten (no mtime churn, no window at all).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        if path.is_file() and path.read_bytes() == data:
            return False
        write_bytes_atomic(path, data)
        return True


def make_dir(path: Path, what: str) -> None:
    """Create a folder and prove it is writable, or exit 73 naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spineseg-write-test-"):
            pass
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{path}: cannot create the {what} ({e.strerror or e})"
        ) from e
