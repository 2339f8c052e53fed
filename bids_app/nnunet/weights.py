"""Install, locate and verify the TotalSpineSeg nnU-Net weights (docs/method.md §5).

Knows the official release URLs and folder layout, nothing about labels or networks. Weights
live in `<root>/<release>/Dataset10x_*` next to a `manifest.json` holding SHA-256 hashes, so
every start can prove that the checkpoints are the ones that were installed: TotalSpineSeg
itself never checks (§5.4), and a truncated 1 GB download otherwise fails later with a torch
traceback or, worse, loads a different model silently.

A weights folder without a manifest (unpacked or copied by hand) gets one on its first use,
with a warning: from then on a changed file is refused as in an installed folder. When the
folder is read-only, that manifest goes to the per-user cache instead
(`$XDG_CACHE_HOME/spineseg/manifests/`, one file per resolved folder path); when neither can
be written, the folder is refused. The shipped demo models are checked against the hashes
listed in their README.

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
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from bids_app.plumbing.atomic import write_json_atomic

log = logging.getLogger(__name__)

_URL = "https://github.com/neuropoly/totalspineseg/releases/download/{rel}/{name}_{rel}.zip"
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"
DEFAULT_RELEASE = "r20260730"
RELEASES: dict[str, dict[str, str]] = {
    rel: {name: _URL.format(rel=rel, name=name) for name in (STEP1, STEP2)}
    for rel in ("r20260730", "r20251124")
}
# The two networks are told apart by dataset number only, as TotalSpineSeg does.
STEP_PREFIXES = {"step1": "Dataset101_", "step2": "Dataset102_"}
ENV_VAR = "SPINESEG_WEIGHTS"
MANIFEST = "manifest.json"
DEMO_RELEASE = "demo"
UNKNOWN_RELEASE = "unknown"
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo_models"
DEMO_README = "README.md"
_DEMO_SHA_BLOCK = ("<!-- demo-sha:start -->", "<!-- demo-sha:end -->")  # train.py export
_TMP_PREFIX = ".tmp-install-"
_LOCK = ".install.lock"
_CHUNK = 4 << 20
_REINSTALL = "reinstall with `spineseg weights --force`"
_ALTERNATIVES = (
    "offline, install the release zips with `spineseg weights --from DIR|ZIP`, "
    "run with `--weights DIR`, or try the demo models with `--weights demo`"
)


class WeightsError(Exception):
    """Weights missing, corrupt or not installable; the message is one line naming the path."""


@dataclass
class WeightSet:
    """The two model folders of one release, ready for `NnUNetModel.load`.

    `release` is what the weights provably are (official release name, "demo" or "unknown");
    `release_dir` is the folder holding the Dataset folders, whatever its name.
    `sha256` maps each verified file (path relative to the release folder) and each installed
    zip (file name) to its SHA-256, for provenance in the per-image status stamps.
    `resolve_weights` always fills both steps; `install_weights` leaves a step None when only
    the other one has been installed so far (a single-zip install).
    """

    root: Path
    release_dir: Path
    release: str
    step1: Path | None
    step2: Path | None
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.step1 is not None and self.step2 is not None


def describe_release(release: str) -> str:
    """How the CLI names a release, so that demo or unknown weights never pass as official."""
    if release == DEMO_RELEASE:
        return (
            "the demo models (release `demo`: synthetic phantoms only, "
            "not an official TotalSpineSeg release)"
        )
    if release == UNKNOWN_RELEASE:
        return (
            "weights of unknown origin (release `unknown`: not downloaded from an official "
            "TotalSpineSeg release URL, hashes not those of the demo models)"
        )
    return f"TotalSpineSeg release {release}"


def find_checkpoint(dataset_dir: Path) -> Path:
    """Checkpoint TotalSpineSeg would load from a Dataset folder (docs/method.md §1.5).

    The folder must hold exactly one `<Trainer>__<Plans>__<Config>/fold_0`;
    `checkpoint_best.pth` wins over `checkpoint_final.pth` as in TotalSpineSeg since 2025-11.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise WeightsError(f"{dataset_dir}: model folder not found")
    folds = sorted(p for p in dataset_dir.glob("*__*__*/fold_0") if p.is_dir())
    if not folds:
        raise WeightsError(f"{dataset_dir}: no <Trainer>__<Plans>__<Config>/fold_0 folder inside")
    if len(folds) > 1:
        names = ", ".join(p.parent.name for p in folds)
        raise WeightsError(f"{dataset_dir}: several model folders ({names}); keep only one")
    for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
        if (folds[0] / name).is_file():
            return folds[0] / name
    raise WeightsError(f"{folds[0]}: no checkpoint_best.pth or checkpoint_final.pth")


def model_files(dataset_dir: Path) -> list[Path]:
    """Files that decide what a Dataset folder predicts: plans, dataset.json, checkpoint.

    The JSON files must exist and parse, so that an incomplete or damaged folder is refused
    in one line before anything is recorded or loaded.
    """
    checkpoint = find_checkpoint(dataset_dir)
    trainer_dir = checkpoint.parent.parent
    files = [trainer_dir / "plans.json", trainer_dir / "dataset.json", checkpoint]
    for path in files[:2]:
        _check_json_object(path)
    return files


def _check_json_object(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: missing") from e
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a JSON object")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    # hashlib releases the GIL on large buffers, so two 1 GB checkpoints hash in parallel.
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
            return list(pool.map(sha256_file, paths))
    except OSError as e:
        raise WeightsError(f"{e.filename}: cannot read ({e.strerror})") from e


def _records(files: list[Path], base: Path) -> dict[str, dict]:
    """Manifest file records (path relative to `base` -> SHA-256 and size)."""
    return {
        p.relative_to(base).as_posix(): {"sha256": digest, "size": p.stat().st_size}
        for p, digest in zip(files, _hash_all(files), strict=True)
    }


def default_weights_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Per-user weights folder: `$XDG_DATA_HOME/spineseg/weights` or ~/.local/share/..."""
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "spineseg" / "weights"


def _cached_manifest_path(release_dir: Path, env: Mapping[str, str]) -> Path:
    """Per-user cache file recording a read-only weights folder, keyed by its resolved path."""
    home = Path(env.get("HOME") or Path.home())
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "spineseg" / "manifests"
    key = hashlib.sha256(str(release_dir.resolve()).encode()).hexdigest()[:32]
    return cache / f"{key}.json"


# ---------------------------------------------------------------------------------------------
# Finding Dataset folders


def _dataset_dirs(folder: Path) -> dict[str, Path]:
    """step name -> Dataset folder directly inside `folder` (Dataset101_* / Dataset102_*)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for child in sorted(folder.iterdir()):
        for step, prefix in STEP_PREFIXES.items():
            if child.is_dir() and child.name.startswith(prefix):
                if step in found:
                    raise WeightsError(
                        f"{folder}: two {prefix}* folders ({found[step].name}, {child.name})"
                    )
                found[step] = child
    return found


def _both_steps(release_dir: Path) -> dict[str, Path]:
    datasets = _dataset_dirs(release_dir)
    for step, prefix in STEP_PREFIXES.items():
        if step not in datasets:
            raise WeightsError(f"{release_dir}: no {prefix}* folder; {_REINSTALL}")
    return datasets


def _datasets_in(folder: Path, release: str, label: str) -> dict[str, Path]:
    """Dataset folders of an unpacked source: directly inside, or under `<release>/`."""
    for candidate in (folder, folder / release):
        found = _dataset_dirs(candidate)
        if found:
            return found
    raise WeightsError(f"{label}: no Dataset101_*/Dataset102_* folder (also not under {release}/)")


# ---------------------------------------------------------------------------------------------
# Manifest and provenance


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


def _read_manifest(path: Path) -> dict | None:
    return read_manifest(path, _is_manifest, "a SpineSeg weights manifest", _REINSTALL)


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


def _demo_entries() -> dict[str, dict]:
    """Known SHA-256 of the shipped demo models, as manifest entries (Dataset folder -> files).

    `python -m training.demo_models.train export` lists them in the demo README; empty when
    there is no list.
    """
    try:
        text = (DEMO_DIR / DEMO_README).read_text()
    except OSError:
        return {}
    start, end = _DEMO_SHA_BLOCK
    block = text.partition(start)[2].partition(end)[0]
    entries: dict[str, dict] = {}
    for digest, rel in re.findall(r"^([0-9a-f]{64})  (\S+)$", block, re.M):
        entries.setdefault(rel.split("/", 1)[0], {"files": {}})["files"][rel] = {"sha256": digest}
    return entries


def _digests(entry: Mapping) -> dict[str, str]:
    return {rel: rec["sha256"] for rel, rec in entry["files"].items()}


def _origin(name: str, entry: Mapping) -> str:
    """What one recorded Dataset folder provably is: an official release, demo or unknown."""
    for rel, urls in RELEASES.items():
        if entry.get("source") == urls.get(name):
            return rel
    demo = _demo_entries().get(name)
    return DEMO_RELEASE if demo and _digests(entry) == _digests(demo) else UNKNOWN_RELEASE


def _release_of(entries: Mapping[str, Mapping]) -> str:
    """Release of recorded Dataset folders: the one they all provably share, else unknown."""
    origins = {_origin(name, entry) for name, entry in entries.items()}
    return origins.pop() if len(origins) == 1 else UNKNOWN_RELEASE


def _flat_hashes(entries: Mapping[str, Mapping]) -> dict[str, str]:
    """Installed zip names and model file paths -> SHA-256, as recorded."""
    hashes: dict[str, str] = {}
    for entry in entries.values():
        if entry.get("zip"):
            hashes[entry["zip"]["name"]] = entry["zip"]["sha256"]
        hashes.update(_digests(entry))
    return hashes


def _verify(
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
    for path, digest in zip(files, _hash_all(files), strict=True):
        if digest != expected[path]["sha256"]:
            raise WeightsError(f"{path}: SHA-256 differs from {where} (file changed); {fix}")
        hashes[path.relative_to(release_dir).as_posix()] = digest
    return hashes


def _record_first_use(release_dir: Path, datasets: dict[str, Path], env: Mapping[str, str]) -> dict:
    """Hash a folder that has no manifest and record it: in the folder, else the user cache."""
    installed = datetime.now(UTC).isoformat(timespec="seconds")
    entries = {
        ds.name: {
            "source": f"{ds.resolve()} (recorded at first use)",
            "installed": installed,
            "zip": None,
            "files": _records(model_files(ds), release_dir),
        }
        for ds in datasets.values()
    }
    manifest = {"release": _release_of(entries), "first_use": True, "datasets": entries}
    target = release_dir / MANIFEST
    try:
        write_json_atomic(target, manifest)
    except OSError:
        target = _cached_manifest_path(release_dir, env)
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


# ---------------------------------------------------------------------------------------------
# Resolving


def resolve_weights(
    cli_path: Path | str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    release: str | None = None,
    demo: bool = False,
) -> WeightSet:
    """Find and verify the weights to run with.

    Precedence: `cli_path` > $SPINESEG_WEIGHTS > `default_weights_dir()`. The demo models
    shipped in the package are used only when asked for: `demo=True`, the path "demo" or
    their folder; they are checked against the hashes in their README. Any other root may
    hold `<release>/Dataset10x_*` (an official release, or `release` when given) or the
    Dataset folders directly. Every call re-hashes the model files against the manifest; a
    folder without one gets one now (see the module docstring).
    """
    chosen = cli_path if cli_path is not None else env.get(ENV_VAR) or None
    if demo or str(chosen) == "demo" or (chosen and Path(chosen).resolve() == DEMO_DIR):
        return _resolve_demo()
    root = Path(chosen) if chosen is not None else default_weights_dir(env)
    release_dir = _locate_release(root, release)
    datasets = _both_steps(release_dir)
    own, cached = release_dir / MANIFEST, _cached_manifest_path(release_dir, env)
    where = own if own.is_file() else cached
    manifest = _read_manifest(where)
    if manifest is None:
        manifest = _record_first_use(release_dir, datasets, env)
        hashes = _flat_hashes(manifest["datasets"])
    else:
        fix = (
            f"restore the file, or delete {where} to record the folder as it is now"
            if manifest.get("first_use")
            else _REINSTALL
        )
        hashes = _verify(release_dir, datasets, manifest["datasets"], where, fix)
    used = {ds.name: manifest["datasets"][ds.name] for ds in datasets.values()}
    return WeightSet(
        root, release_dir, _release_of(used), datasets["step1"], datasets["step2"], hashes
    )


def _resolve_demo() -> WeightSet:
    """The shipped demo models, checked against the hashes in their README (no manifest)."""
    readme = DEMO_DIR / DEMO_README
    entries = _demo_entries()
    if not entries:
        raise WeightsError(f"{readme}: no SHA-256 list of the demo models; reinstall spineseg")
    datasets = _both_steps(DEMO_DIR)
    hashes = _verify(DEMO_DIR, datasets, entries, readme, "reinstall spineseg")
    return WeightSet(DEMO_DIR, DEMO_DIR, DEMO_RELEASE, datasets["step1"], datasets["step2"], hashes)


def _locate_release(root: Path, release: str | None) -> Path:
    """Folder holding the Dataset folders of a weights root."""
    hint = f"install them with `spineseg weights` or, {_ALTERNATIVES}"
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found; {hint}")
    if _dataset_dirs(root):
        if release is not None and root.name != release:
            raise WeightsError(f"{root}: holds the model folders directly, not release {release}")
        return root
    installed = sorted(
        d.name for d in root.iterdir() if not d.name.startswith(".") and _dataset_dirs(d)
    )
    if release is not None:
        if release not in installed:
            have = ", ".join(installed) or "none"
            raise WeightsError(f"{root}: release {release} not installed (installed: {have})")
        return root / release
    if not installed:
        raise WeightsError(f"{root}: no TotalSpineSeg weights inside; {hint}")
    official = [rel for rel in RELEASES if rel in installed]  # newest first
    return root / (official[0] if official else installed[-1])


# ---------------------------------------------------------------------------------------------
# Installing


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
        with _install_lock(dest_root):
            for stale in dest_root.glob(f"{_TMP_PREFIX}*"):  # left by a killed install
                shutil.rmtree(stale, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=dest_root, prefix=_TMP_PREFIX) as tmp:
                skip_dir = dest_root / folder if folder else None
                staged = _stage(Path(tmp), source, release, skip_dir, progress, force)
                folder = folder or _release_of({s.folder.name: s.entry for s in staged})
                _commit(staged, dest_root / folder, Path(tmp))
    except OSError as e:
        raise WeightsError(f"{e.filename or dest_root}: {e.strerror or e}") from e
    release_dir = dest_root / folder
    entries = (_read_manifest(release_dir / MANIFEST) or {}).get("datasets", {})
    datasets = _dataset_dirs(release_dir)
    return WeightSet(
        dest_root,
        release_dir,
        _release_of(entries),
        datasets.get("step1"),
        datasets.get("step2"),
        _flat_hashes(entries),
    )


@contextmanager
def _install_lock(dest_root: Path) -> Iterator[None]:
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
        for ds in _datasets_in(folder, wanted, str(folder)).values():
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
        item.entry["files"] = _records(files, item.folder.parent)
    return staged


def _classify(
    source: str | Path | None, release: str | None
) -> tuple[list[str], list[Path], Path | None]:
    """(URLs to download, local zips, unpacked folder) for an install source."""
    wanted = release or DEFAULT_RELEASE
    if source is None:
        if wanted not in RELEASES:
            known = ", ".join(RELEASES)
            raise WeightsError(f"release {wanted}: no download URL known (known: {known})")
        return list(RELEASES[wanted].values()), [], None
    text = str(source)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        if text.endswith(".zip"):
            return [text], [], None
        names = tuple(RELEASES.get(wanted, (STEP1, STEP2)))
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
        if others and not any(_dataset_dirs(d) for d in (path, path / wanted)):
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
    manifest = _read_manifest(release_dir / MANIFEST) or {"datasets": {}}
    entry = manifest["datasets"].get(name)
    if not folder.is_dir() or entry is None:
        return False
    if entry.get("source") != url:
        log.info("%s came from %s; replacing it with %s", folder, entry.get("source"), url)
        return False
    try:
        _verify(release_dir, {"this": folder}, {name: entry}, release_dir / MANIFEST, _REINSTALL)
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
            f"{url}: download failed (HTTP {e.code} {e.reason}); {_ALTERNATIVES}"
        ) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"{url}: download failed ({reason}); {_ALTERNATIVES}") from e
    if total is not None and dest.stat().st_size != total:
        raise WeightsError(
            f"{url}: download truncated ({dest.stat().st_size} of {total} bytes); {_ALTERNATIVES}"
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
    datasets = _datasets_in(dest, release, f"{origin} (zip)")
    record = {"name": origin.rsplit("/", 1)[-1], "sha256": digest}
    return [_Staged(ds, {"source": origin, "zip": record}) for ds in datasets.values()]


def _commit(staged: list[_Staged], release_dir: Path, tmp: Path) -> None:
    """Move checked folders into place and record them; old copies go to the temp dir."""
    if not staged:
        return
    release_dir.mkdir(exist_ok=True)
    manifest = _read_manifest(release_dir / MANIFEST) or {"datasets": {}}
    manifest.pop("first_use", None)
    installed = datetime.now(UTC).isoformat(timespec="seconds")
    for item in staged:
        final = release_dir / item.folder.name
        if final.exists():
            os.replace(final, tmp / f"old-{final.name}")
        os.replace(item.folder, final)
        manifest["datasets"][final.name] = {**item.entry, "installed": installed}
    manifest["release"] = _release_of(manifest["datasets"])
    write_json_atomic(release_dir / MANIFEST, manifest)


# ---------------------------------------------------------------------------------------------
# Packing


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
                        shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
