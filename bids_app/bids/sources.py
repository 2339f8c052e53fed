"""What a source image file is: readable content or not, and a fingerprint for the stamp.

A result is only current while its source is the file it was made from: re-converted DICOMs
replace an image under the same name, and a git-annex/DataLad file may be a link whose content
is not here yet. The stamp keeps the source's size, modification time and SHA-256; a rerun
compares size and time first (a stat per image), and hashes only when they differ, so that a
file touched or fetched again with the same bytes is not recomputed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

_ANNEX_POINTER = b"/annex/objects/"  # an unlocked git-annex file without its content
_POINTER_MAX = 1024  # such a pointer is one short line
_HASH_CHUNK = 1 << 20


def content_problem(path: Path) -> str | None:
    """Why the file has no content to read (None when it has): a broken symbolic link, named
    with its target, or a git-annex pointer file."""
    path = Path(path)
    annex_hint = "a git-annex/DataLad file whose content is not here: `datalad get` it"
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        hint = f" ({annex_hint})" if "annex/objects/" in target else ""
        return f"broken symbolic link to {target}{hint}"
    try:
        if path.stat().st_size <= _POINTER_MAX:
            with open(path, "rb") as f:
                if f.read(_POINTER_MAX).startswith(_ANNEX_POINTER):
                    return f"git-annex pointer file, not an image ({annex_hint})"
    except OSError:
        return None  # left to the reader, which names the error
    return None


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, read in pieces (images can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(_HASH_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def source_record(path: Path) -> dict[str, object]:
    """The stamp's `source_file`: size, mtime_ns and sha256, or the problem reading it."""
    problem = content_problem(path)
    if problem is not None:
        return {"problem": problem}
    try:
        info = Path(path).stat()
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": file_sha256(path)}
    except OSError as e:
        return {"problem": f"cannot read ({e.strerror or e})"}


def source_change(recorded: Mapping[str, object] | None, path: Path) -> str | None:
    """Why `path` is not the file a stamp's `source_file` describes (None: it is, or we
    cannot tell).

    A source that cannot be read now (content dropped with `datalad drop` after the run) does
    not make a result stale: nothing says the content changed. A source that could not be read
    when stamped and can be now (content fetched, link repaired) is new.
    """
    if not recorded:  # a stamp from before sources were recorded
        return None
    if content_problem(path) is not None:
        return None
    try:
        info = Path(path).stat()
    except OSError:
        return None
    was = recorded.get("problem")
    if was:
        return f"the source can be read now (before: {was})"
    if info.st_size == recorded.get("size") and info.st_mtime_ns == recorded.get("mtime_ns"):
        return None
    try:
        if file_sha256(path) == recorded.get("sha256"):
            return None  # touched or copied again: the same bytes
    except OSError:
        return None
    size = recorded.get("size")
    if info.st_size != size:
        return (
            f"the source image changed since the previous result ({size} -> {info.st_size} bytes)"
        )
    return "the source image changed since the previous result (same size, other content)"
