"""Verifying weights: SHA-256 manifests, first-use records and the provenance they prove.

Weights live in `<root>/<release>/Dataset10x_*` next to a `manifest.json` holding SHA-256
hashes, so every start can prove that the checkpoints are the ones that were installed:
TotalSpineSeg itself never checks (docs/method.md §5.4), and a truncated 1 GB download
otherwise fails later with a torch traceback or, worse, loads a different model silently.

A hash is recorded only for a file that is whole: a PyTorch checkpoint is a zip, and every
member's CRC-32 (the zip's own checksums) is checked first, so a damaged copy is refused
(naming it) instead of being recorded as the reference at install or first use.

A weights folder without a manifest (unpacked or copied by hand) gets one on its first use,
with a warning: from then on a changed file is refused as in an installed folder. When the
folder is read-only, that manifest goes to the per-user cache instead
(`$XDG_CACHE_HOME/spineseg/manifests/`, one file per resolved folder path); when neither can
be written, the folder is refused.

The release a run reports (`WeightSet.release`, hence GeneratedBy) is what the sources and
hashes prove, never a folder name: the project knows no official hashes, so a release is
official only when every Dataset folder was downloaded from that release's official URL;
the shipped demo models (recognised by their hashes) are "demo"; anything else is "unknown".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bids_app.nnunet.weights import releases
from bids_app.nnunet.weights.folders import WeightsError, model_files
from bids_app.nnunet.weights.releases import (
    DEMO_RELEASE,
    MANIFEST,
    REINSTALL,
    UNKNOWN_RELEASE,
    demo_entries,
)
from bids_app.plumbing.atomic import write_json_atomic

log = logging.getLogger(__name__)

CHUNK = 4 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_all(paths: list[Path]) -> list[str]:
    # hashlib releases the GIL on large buffers, so two 1 GB checkpoints hash in parallel.
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
            return list(pool.map(sha256_file, paths))
    except OSError as e:
        raise WeightsError(f"{e.filename}: cannot read ({e.strerror})") from e


def check_checkpoint(path: Path) -> None:
    """Refuse a damaged PyTorch checkpoint (one line naming it).

    A checkpoint is a zip (`torch.save`): every member's data must match its CRC-32, and every
    header byte must agree with what the zip says elsewhere (`_zip_problem`), so one flipped
    or truncated byte anywhere is caught without a reference hash. Only files that can hold a
    model are checked (`.pth`, `.pt`); the JSON files are parsed by `model_files`.
    """
    if path.suffix not in (".pth", ".pt"):
        return
    fix = "restore or reinstall it (`spineseg weights --force`, or a fresh copy)"
    try:
        with zipfile.ZipFile(path) as zf:
            problem = _zip_problem(zf, path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, struct.error) as e:
        problem = f"not a readable PyTorch zip: {e}"
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from e
    if problem is not None:
        raise WeightsError(f"{path}: damaged checkpoint ({problem}); {fix}")


_LOCAL = struct.Struct("<4s5HL2L2H")  # local file header
# The data descriptor after a member's data: 32-bit sizes, or 64-bit ones in a ZIP64 file.
_DESCRIPTORS = (struct.Struct("<4s3L"), struct.Struct("<4sLQQ"))
_PADDING, _ZIP64 = b"FB", b"\x01\x00"  # torch.save's extra fields: alignment and ZIP64 sizes


def _torch_extra(extra: bytes) -> bool:
    """Whether a local extra field is what torch.save writes: ZIP64 sizes and alignment
    padding ("FB", its length, then that many "Z"), nothing else."""
    while extra:
        kind, size = extra[:2], int.from_bytes(extra[2:4], "little")
        body, extra = extra[4 : 4 + size], extra[4 + size :]
        if len(body) != size or kind not in (_PADDING, _ZIP64):
            return False
        if kind == _PADDING and body != b"Z" * size:
            return False
    return True


_END = struct.Struct("<4s4H2LH")  # end of central directory
_END64 = struct.Struct("<4sQ2H2L4Q")  # ZIP64 end of central directory
_LOCATOR = struct.Struct("<4sLQL")  # ZIP64 end locator


def _end_problem(path: Path, start_dir: int, count: int) -> str | None:
    """Whether the end records (plain, and ZIP64 where present: torch.save writes both)
    describe exactly this directory."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(size - _END.size)
        _, *plain = _END.unpack(fh.read(_END.size))
        records = [(plain, size - _END.size)]
        fh.seek(size - _END.size - _LOCATOR.size)
        locator = _LOCATOR.unpack(fh.read(_LOCATOR.size))
        if locator[0] == b"PK\x06\x07":
            if locator[1:] != (0, size - _END.size - _LOCATOR.size - _END64.size, 1):
                return "its ZIP64 end locator is damaged"
            fh.seek(locator[2])
            sig, rest, _made, needed, *wide = _END64.unpack(fh.read(_END64.size))
            if sig != b"PK\x06\x06" or rest != _END64.size - 12 or needed != 45:
                return "its ZIP64 end record is damaged"
            records = [(plain, locator[2]), ([*wide, 0], locator[2])]
    for (disk, cd_disk, here, total, cd_size, cd_offset, comment), cd_end in records:
        wanted = (0, 0, count, count, cd_end - start_dir, start_dir, 0)
        found = (disk, cd_disk, here, total, cd_size, cd_offset, comment)
        # a ZIP64 file may leave 0xFF.. placeholders in the plain record
        pairs = zip(found, wanted, strict=True)
        if any(f != w and f not in (0xFFFF, 0xFFFFFFFF) for f, w in pairs):
            return "its end record does not match its directory"
    return None


def _directory_entries(path: Path, start_dir: int) -> int | None:
    """How many entries fill the directory exactly, by their declared lengths (None: they
    do not end where the end records begin)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(size - _END.size - _LOCATOR.size)
        locator = _LOCATOR.unpack(fh.read(_LOCATOR.size))
        end = locator[2] if locator[0] == b"PK\x06\x07" else size - _END.size
        fh.seek(start_dir)
        directory = fh.read(max(0, end - start_dir))
    count, at = 0, 0
    while at < len(directory):
        if directory[at : at + 4] != b"PK\x01\x02" or at + 46 > len(directory):
            return None
        lengths = struct.unpack_from("<3H", directory, at + 28)
        at += 46 + sum(lengths)
        count += 1
    return count if at == len(directory) else None


def _zip_problem(zf: zipfile.ZipFile, path: Path) -> str | None:
    """What is wrong with a checkpoint zip, or None.

    The data: each member's CRC (`testzip`). The structure: the header fields that the
    central directory repeats (flags, method, time, name; CRC and sizes in the data
    descriptor or the header) must match it; torch.save's padding is all "Z"; fields that
    torch.save writes alike for every member must agree (a flip in one stands out); the end
    records must describe this directory; no comment. Left unchecked: the "version made by"
    of the ZIP64 end record, which no reader uses.
    """
    members = zf.infolist()
    if zf.comment:
        return "a zip comment, which torch.save never writes"
    if any(info.volume for info in members):
        return "a directory entry names a second disk"
    end = _end_problem(path, zf.start_dir, len(members))
    if end is not None:
        return end
    if _directory_entries(path, zf.start_dir) != len(members):
        return "its directory entries do not fill its directory"
    same = ("create_version", "create_system", "extract_version", "reserved")
    for field in (*same, "internal_attr", "external_attr"):
        values = [getattr(info, field) for info in members]
        odd = [info for info in members if getattr(info, field) != max(values, key=values.count)]
        if odd:
            return f"the directory entry of {odd[0].filename} differs from the others"
    with open(path, "rb") as fh:
        for info in members:
            fh.seek(info.header_offset)
            sig, version, flags, method, time, date, crc, csize, usize, nlen, xlen = _LOCAL.unpack(
                fh.read(_LOCAL.size)
            )
            name, extra = fh.read(nlen), fh.read(xlen)
            dostime = info.date_time[3] << 11 | info.date_time[4] << 5 | info.date_time[5] // 2
            y, mo, d = info.date_time[:3]
            dosdate = (y - 1980) << 9 | mo << 5 | d
            header = (sig, version, flags, method, time, date, name)
            expected = (
                b"PK\x03\x04",
                info.extract_version,
                info.flag_bits,
                info.compress_type,
                dostime,
                dosdate,
                info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"),
            )
            if header != expected:
                return f"the header of member {info.filename} disagrees with the directory"
            if not _torch_extra(extra):
                return f"the extra field of member {info.filename} is not torch.save's"
            if flags & 0x08:  # sizes and CRC follow the data
                fh.seek(info.compress_size, 1)
                tail = fh.read(_DESCRIPTORS[1].size)
                want = (b"PK\x07\x08", info.CRC, info.compress_size, info.file_size)
                found = [d.unpack(tail[: d.size]) for d in _DESCRIPTORS if len(tail) >= d.size]
                if (crc, csize, usize) != (0, 0, 0) or want not in found:
                    return f"the data descriptor of member {info.filename} is damaged"
            elif (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
                return f"the header of member {info.filename} disagrees with the directory"
    bad = zf.testzip()
    return f"its member {bad} fails the zip's CRC check" if bad is not None else None


def records(files: list[Path], base: Path) -> dict[str, dict]:
    """Manifest file records (path relative to `base` -> SHA-256 and size), for files that
    are whole: a checkpoint whose zip CRCs fail is refused before any hash is recorded."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
        list(pool.map(check_checkpoint, files))  # zlib's CRC releases the GIL too
    return {
        p.relative_to(base).as_posix(): {"sha256": digest, "size": p.stat().st_size}
        for p, digest in zip(files, hash_all(files), strict=True)
    }


def cached_manifest_path(release_dir: Path, env: Mapping[str, str]) -> Path:
    """Per-user cache file recording a read-only weights folder, keyed by its resolved path."""
    home = Path(env.get("HOME") or Path.home())
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "spineseg" / "manifests"
    key = hashlib.sha256(str(release_dir.resolve()).encode()).hexdigest()[:32]
    return cache / f"{key}.json"


def read_manifest(
    path: Path, is_valid: Callable[[object], bool], what: str, hint: str = ""
) -> dict | None:
    """The manifest at `path` (None when there is none), checked by `is_valid`; unreadable or
    malformed is a one-line WeightsError naming it as `what`, followed by `hint`."""
    if not path.is_file():
        return None
    tail = f"; {hint}" if hint else ""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable manifest ({e}){tail}") from e
    if not is_valid(data):
        raise WeightsError(f"{path}: not {what}{tail}")
    assert isinstance(data, dict)  # is_valid checked the shape
    return data


def file_records_ok(files: object) -> bool:
    """A manifest's file table: relative path -> {"sha256", "size", ...}."""
    return isinstance(files, dict) and all(
        isinstance(r, dict) and {"sha256", "size"} <= set(r) for r in files.values()
    )


def read_weights_manifest(path: Path) -> dict | None:
    return read_manifest(path, _is_manifest, "a SpineSeg weights manifest", REINSTALL)


def _is_manifest(data: object) -> bool:
    """Shape check, so that a hand-edited manifest fails with a message, not a KeyError."""
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        return False
    for entry in data["datasets"].values():
        if not isinstance(entry, dict) or not file_records_ok(entry.get("files")):
            return False
        zip_record = entry.get("zip")
        if zip_record is not None and not (
            isinstance(zip_record, dict) and {"name", "sha256"} <= set(zip_record)
        ):
            return False
    return True


def _digests(entry: Mapping) -> dict[str, str]:
    return {rel: rec["sha256"] for rel, rec in entry["files"].items()}


def _origin(name: str, entry: Mapping) -> str:
    """What one recorded Dataset folder provably is: an official release, demo or unknown."""
    for rel, urls in releases.RELEASES.items():
        if entry.get("source") == urls.get(name):
            return rel
    demo = demo_entries().get(name)
    return DEMO_RELEASE if demo and _digests(entry) == _digests(demo) else UNKNOWN_RELEASE


def release_of(entries: Mapping[str, Mapping]) -> str:
    """Release of recorded Dataset folders: the one they all provably share, else unknown."""
    origins = {_origin(name, entry) for name, entry in entries.items()}
    return origins.pop() if len(origins) == 1 else UNKNOWN_RELEASE


def flat_hashes(entries: Mapping[str, Mapping]) -> dict[str, str]:
    """Installed zip names and model file paths -> SHA-256, as recorded."""
    hashes: dict[str, str] = {}
    for entry in entries.values():
        if entry.get("zip"):
            hashes[entry["zip"]["name"]] = entry["zip"]["sha256"]
        hashes.update(_digests(entry))
    return hashes


def verify(
    release_dir: Path,
    datasets: dict[str, Path],
    entries: Mapping[str, Mapping],
    where: Path,
    fix: str,
) -> dict[str, str]:
    """Hash every model file and compare with what `where` records; file name -> SHA-256.

    `fix` ends every error: what the user can do about it.
    """
    files: list[Path] = []
    expected: dict[Path, Mapping] = {}
    hashes: dict[str, str] = {}
    for ds in datasets.values():
        entry = entries.get(ds.name)
        if entry is None:
            raise WeightsError(f"{ds}: not recorded in {where}; {fix}")
        if entry.get("zip"):
            hashes[entry["zip"]["name"]] = entry["zip"]["sha256"]
        for path in model_files(ds):
            record = entry["files"].get(path.relative_to(release_dir).as_posix())
            if record is None:
                raise WeightsError(f"{path}: not part of the installed weights; {fix}")
            size = path.stat().st_size
            if "size" in record and size != record["size"]:
                raise WeightsError(
                    f"{path}: size {size} differs from the installed "
                    f"{record['size']} bytes (changed or truncated); {fix}"
                )
            files.append(path)
            expected[path] = record
    for path, digest in zip(files, hash_all(files), strict=True):
        if digest != expected[path]["sha256"]:
            raise WeightsError(f"{path}: SHA-256 differs from {where} (file changed); {fix}")
        hashes[path.relative_to(release_dir).as_posix()] = digest
    return hashes


def record_first_use(release_dir: Path, datasets: dict[str, Path], env: Mapping[str, str]) -> dict:
    """Hash a folder that has no manifest and record it: in the folder, else the user cache."""
    installed = datetime.now(UTC).isoformat(timespec="seconds")
    entries = {
        ds.name: {
            "source": f"{ds.resolve()} (recorded at first use)",
            "installed": installed,
            "zip": None,
            "files": records(model_files(ds), release_dir),
        }
        for ds in datasets.values()
    }
    manifest = {"release": release_of(entries), "first_use": True, "datasets": entries}
    target = release_dir / MANIFEST
    try:
        write_json_atomic(target, manifest)
    except OSError:
        target = cached_manifest_path(release_dir, env)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(target, {**manifest, "folder": str(release_dir.resolve())})
        except OSError as e:
            raise WeightsError(
                f"{release_dir}: no {MANIFEST}, and neither this folder nor {target.parent} "
                f"is writable to record one ({e.strerror}); install the folder with "
                f"`spineseg weights --from {release_dir}`, or set XDG_CACHE_HOME to a "
                "writable folder"
            ) from e
    log.warning(
        "%s: no %s; recorded the SHA-256 of its model files in %s (first use): "
        "a later change to them is refused",
        release_dir,
        MANIFEST,
        target,
    )
    return manifest
