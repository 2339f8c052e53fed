"""Installing weights: download or unpack the release zips (or copy a folder) into place
atomically, check them and record their hashes; and packing model folders as release zips.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from bids_app.nnunet.weights import releases
from bids_app.nnunet.weights.folders import (
    WeightsError,
    WeightSet,
    dataset_dirs,
    datasets_in,
    find_checkpoint,
    model_files,
)
from bids_app.nnunet.weights.manifest import (
    CHUNK,
    flat_hashes,
    read_weights_manifest,
    records,
    release_of,
    sha256_file,
    verify,
)
from bids_app.nnunet.weights.releases import (
    ALTERNATIVES,
    DEFAULT_RELEASE,
    MANIFEST,
    REINSTALL,
    STEP1,
    STEP2,
)
from bids_app.plumbing.atomic import write_json_atomic

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-install-"

_LOCK = ".install.lock"


@dataclass
class _Staged:
    """One Dataset folder unpacked in the temp dir, checked and hashed, not yet in place.

    `entry` is its manifest record: source, zip, files.
    """

    folder: Path
    entry: dict


def install_weights(
    dest_root: Path,
    *,
    release: str | None = None,
    source: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> WeightSet:
    """Install weights into `dest_root/<folder>/` atomically and record their hashes.

    `source`: None downloads the official zips of `release` (default the newest) from
    GitHub; a URL ending in .zip, or a URL prefix (file://, http://...) of a folder holding
    `Dataset10x_..._<release>.zip`; a zip file (installs that dataset only; call again for
    the other); a folder holding the zips; or an unpacked folder with Dataset101_*/
    Dataset102_* (directly or under `<release>/`). The folder is named `release` when given,
    else after what was installed: the release for an official download, else "demo" or
    "unknown" (see the module docstring).
    Everything is unpacked and checked in a temp folder inside `dest_root`, then renamed into
    place, so an interrupted install never leaves a half folder, and a failed one leaves
    `dest_root` as it was. A file lock serialises parallel installs (cluster jobs sharing one
    weights folder). Downloads skip datasets already installed from the same URL and
    verified, unless `force`.
    """
    dest_root = Path(dest_root)
    wanted = release or DEFAULT_RELEASE
    folder = release or (wanted if source is None else None)
    try:
        with install_lock(dest_root):
            for stale in dest_root.glob(f"{_TMP_PREFIX}*"):  # left by a killed install
                shutil.rmtree(stale, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=dest_root, prefix=_TMP_PREFIX) as tmp:
                skip_dir = dest_root / folder if folder else None
                staged = _stage(Path(tmp), source, release, skip_dir, progress, force)
                folder = folder or release_of({s.folder.name: s.entry for s in staged})
                _commit(staged, dest_root / folder, Path(tmp))
    except OSError as e:
        raise WeightsError(f"{e.filename or dest_root}: {e.strerror or e}") from e
    release_dir = dest_root / folder
    entries = (read_weights_manifest(release_dir / MANIFEST) or {}).get("datasets", {})
    datasets = dataset_dirs(release_dir)
    return WeightSet(
        dest_root,
        release_dir,
        release_of(entries),
        datasets.get("step1"),
        datasets.get("step2"),
        flat_hashes(entries),
    )


@contextmanager
def install_lock(dest_root: Path) -> Iterator[None]:
    """Hold `dest_root`'s install lock, creating the folder; a failure leaves it as it was.

    When an install fails (no network, a bad zip), the folders and the lock file that this
    call created are removed while the lock is still held, so that the next attempt meets the
    same state and gives the same error. A waiter that locked the removed file is sent back
    by filelock (it checks that the file it locked is still linked), and a folder removed
    under it is created again here.
    """
    lock_path = dest_root / _LOCK
    while True:
        missing = []  # folders this call creates, innermost first
        for folder in (dest_root, *dest_root.parents):
            if folder.exists():
                break
            missing.append(folder)
        had_lock = lock_path.exists()
        dest_root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire()
            break
        except FileNotFoundError:  # a failed install removed the folder while we waited
            continue
    try:
        yield
    except BaseException:
        if not had_lock:
            lock_path.unlink(missing_ok=True)
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:  # not empty: someone else uses it now
                break
        raise
    finally:
        lock.release()


def _stage(
    tmp: Path,
    source: str | Path | None,
    release: str | None,
    skip_dir: Path | None,
    progress: bool,
    force: bool,
) -> list[_Staged]:
    wanted = release or DEFAULT_RELEASE
    urls, zips, folder = _classify(source, release)
    if urls and skip_dir is not None and not force:
        urls = [u for u in urls if not _installed_and_valid(skip_dir, u, wanted)]
    staged: list[_Staged] = []
    for i, url in enumerate(urls):
        local = _download(url, tmp / f"download-{i}.zip", progress)
        staged += _unpack(local, tmp / f"unpacked-{i}", url, wanted)
    for i, zpath in enumerate(zips):
        staged += _unpack(zpath, tmp / f"unpacked-zip-{i}", str(zpath.resolve()), wanted)
    if folder is not None:
        for ds in datasets_in(folder, wanted, str(folder)).values():
            model_files(ds)  # refused here, naming the user's file rather than the copy
            copy = tmp / "copied" / ds.name
            shutil.copytree(ds, copy, symlinks=False)
            staged.append(_Staged(copy, {"source": str(ds.resolve()), "zip": None}))
    names = [s.folder.name for s in staged]
    if len(set(names)) != len(names):
        raise WeightsError(f"{source}: the same dataset appears twice ({', '.join(names)})")
    for item in staged:
        try:
            files = model_files(item.folder)
        except WeightsError as e:  # name the file inside the zip, not in the temp folder
            raise WeightsError(
                str(e).replace(f"{item.folder.parent}/", f"{item.entry['source']}: ")
            ) from e
        item.entry["files"] = records(files, item.folder.parent)
    return staged


def _classify(
    source: str | Path | None, release: str | None
) -> tuple[list[str], list[Path], Path | None]:
    """(URLs to download, local zips, unpacked folder) for an install source."""
    wanted = release or DEFAULT_RELEASE
    if source is None:
        if wanted not in releases.RELEASES:
            known = ", ".join(releases.RELEASES)
            raise WeightsError(f"release {wanted}: no download URL known (known: {known})")
        return list(releases.RELEASES[wanted].values()), [], None
    text = str(source)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        if text.endswith(".zip"):
            return [text], [], None
        names = tuple(releases.RELEASES.get(wanted, (STEP1, STEP2)))
        return [f"{text.rstrip('/')}/{name}_{wanted}.zip" for name in names], [], None
    path = Path(source)
    if path.is_file():
        if release is not None:
            _check_zip_release(path, release)
        return [], [path], None
    if path.is_dir():
        zips = sorted(path.glob(f"Dataset*_{wanted}.zip"))
        if zips:
            return [], zips, None
        others = sorted(p.name for p in path.glob("Dataset*.zip"))
        if others and not any(dataset_dirs(d) for d in (path, path / wanted)):
            raise WeightsError(
                f"{path}: no Dataset*_{wanted}.zip (found {', '.join(others)}); "
                "pass the release these zips belong to"
            )
        return [], [], path
    raise WeightsError(f"{path}: no such file or folder")


def _check_zip_release(path: Path, release: str) -> None:
    match = re.search(r"_(r\d{8})\.zip$", path.name)
    if match and match.group(1) != release:
        raise WeightsError(
            f"{path}: zip of release {match.group(1)}, but release {release} was asked for"
        )


def _name_of(url: str, release: str) -> str:
    return url.rsplit("/", 1)[-1].removesuffix(".zip").removesuffix(f"_{release}")


def _installed_and_valid(release_dir: Path, url: str, release: str) -> bool:
    """Whether the dataset behind `url` is installed from that very URL and unchanged."""
    name = _name_of(url, release)
    folder = release_dir / name
    manifest = read_weights_manifest(release_dir / MANIFEST) or {"datasets": {}}
    entry = manifest["datasets"].get(name)
    if not folder.is_dir() or entry is None:
        return False
    if entry.get("source") != url:
        log.info("%s came from %s; replacing it with %s", folder, entry.get("source"), url)
        return False
    try:
        verify(release_dir, {"this": folder}, {name: entry}, release_dir / MANIFEST, REINSTALL)
    except WeightsError as e:
        log.warning("%s; reinstalling", e)
        return False
    log.info("%s already installed and verified; skipping download", folder)
    return True


def _download(url: str, dest: Path, progress: bool) -> Path:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            name = url.rsplit("/", 1)[-1]
            bar_args = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "desc": name}
            with tqdm(total=total, disable=not progress, **bar_args) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise WeightsError(
            f"{url}: download failed (HTTP {e.code} {e.reason}); {ALTERNATIVES}"
        ) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"{url}: download failed ({reason}); {ALTERNATIVES}") from e
    if total is not None and dest.stat().st_size != total:
        raise WeightsError(
            f"{url}: download truncated ({dest.stat().st_size} of {total} bytes); {ALTERNATIVES}"
        )
    return dest


def _unpack(zip_path: Path, dest: Path, origin: str, release: str) -> list[_Staged]:
    """Extract a release zip and return its Dataset folders.

    Extraction reads every member to its end, where zipfile checks the CRC-32 (the check
    `testzip` makes), so a corrupt or truncated zip fails here without a second 1 GB read.
    """
    digest = sha256_file(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{origin}: corrupt or truncated zip ({e})") from e
    datasets = datasets_in(dest, release, f"{origin} (zip)")
    record = {"name": origin.rsplit("/", 1)[-1], "sha256": digest}
    return [_Staged(ds, {"source": origin, "zip": record}) for ds in datasets.values()]


def _commit(staged: list[_Staged], release_dir: Path, tmp: Path) -> None:
    """Move checked folders into place and record them; old copies go to the temp dir."""
    if not staged:
        return
    release_dir.mkdir(exist_ok=True)
    manifest = read_weights_manifest(release_dir / MANIFEST) or {"datasets": {}}
    manifest.pop("first_use", None)
    installed = datetime.now(UTC).isoformat(timespec="seconds")
    for item in staged:
        final = release_dir / item.folder.name
        if final.exists():
            os.replace(final, tmp / f"old-{final.name}")
        os.replace(item.folder, final)
        manifest["datasets"][final.name] = {**item.entry, "installed": installed}
    manifest["release"] = release_of(manifest["datasets"])
    write_json_atomic(release_dir / MANIFEST, manifest)


def pack_release(dataset_dirs: Iterable[Path], out_dir: Path, release: str) -> list[Path]:
    """Zip model folders the way the official release zips are laid out.

    Each `Dataset10x_<name>` folder becomes `out_dir/Dataset10x_<name>_<release>.zip` with the
    folder at the zip's top. Entry times are fixed so that the same models give the same zips
    (stable Docker layers).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in map(Path, dataset_dirs):
        find_checkpoint(ds)
        target = out_dir / f"{ds.name}_{release}.zip"
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(p for p in ds.rglob("*") if p.is_file()):
                    info = zipfile.ZipInfo(
                        f"{ds.name}/{path.relative_to(ds).as_posix()}", (1980, 1, 1, 0, 0, 0)
                    )
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    info.file_size = path.stat().st_size  # lets zipfile pick ZIP64 when needed
                    with open(path, "rb") as src, zf.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
