"""Atomic and parallel-safe file writing, for every layer (outputs, stamps, weight manifests).

A killed run must never leave a file that looks finished, and several participant jobs may
write into one output_dir at once (BIDS-Apps allow parallel participant runs), so every write
goes to a hidden temp file in the target folder and is renamed into place. Files shared by
all runs (dataset_description.json, LUTs, ...) are also serialised with a lock and left alone
when their content is already right, so concurrent runs neither race nor churn them.

A run killed while writing (kill -9, a node failure) leaves its hidden temp file behind. A
writer holds a lock on its temp file until the file is renamed or removed, and the kernel
drops that lock when the writer dies, so a later run removes exactly the temp files of our
naming whose lock is free (`remove_stale_temps`): never one a running writer still holds,
never a file of another name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

import nibabel as nib
from filelock import FileLock

from bids_app.plumbing.errors import ExitCode, UserError

LOCK_TIMEOUT_S = 600.0
LOCK_NAME = ".spineseg.lock"  # one hidden lock per folder of shared files


_TMP_MARK = ".tmp"
# `.<target name>.<8 random characters of mkstemp>.tmp<target's extension>`
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
# Where locks do not work (some network file systems), a temp file is stale only when old.
STALE_AFTER_S = 3600.0


def _hold(fd: int) -> None:
    """Lock a temp file for as long as `fd` is open (best effort: a file system without
    locks falls back to the age rule of `remove_stale_temps`)."""
    with suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _is_stale(path: Path) -> bool:
    """Whether no living writer holds this temp file: its lock can be taken (or, without
    working locks, it has not changed for STALE_AFTER_S)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone (renamed by its writer), a symlink, unreadable: not ours to take
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False  # a writer is alive
        return time.time() - os.fstat(fd).st_mtime > STALE_AFTER_S
    finally:
        os.close(fd)  # also releases our lock


def remove_stale_temps(folder: Path, target: str | None = None, recursive: bool = False) -> int:
    """Remove the temp files of our naming (`atomic_path`) that no living writer holds.

    `target`: only those of that file name; `recursive`: also in the folders below (a run's
    sweep of its output folder). Returns how many were removed. Errors are ignored: this
    only tidies up, the run goes on either way.
    """
    folders = [Path(folder)]
    if recursive:
        folders += [Path(root) / d for root, dirs, _ in os.walk(folder) for d in dirs]
    removed = 0
    for where in folders:
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            match = _TMP_RE.match(name)
            if not match or (target is not None and match.group("target") != target):
                continue
            path = where / name
            if path.is_file() and not path.is_symlink() and _is_stale(path):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


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
        dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_MARK + suffix
    )
    tmp = Path(tmp_name)
    try:
        _hold(fd)  # until renamed or removed: the file is not stale while we live
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write names no file: name it
            e.filename = str(path)
        raise
    finally:
        os.close(fd)


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
