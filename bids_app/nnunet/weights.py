"""Install, locate and verify the TotalSpineSeg nnU-Net weights (docs/method.md §5).

Knows the official release URLs and folder layout, nothing about labels or networks. Weights
live in `<root>/<release>/Dataset10x_*` next to a `manifest.json` holding SHA-256 hashes, so
every start can prove that the checkpoints are the ones that were installed: TotalSpineSeg
itself never checks (§5.4), and a truncated 1 GB download otherwise fails later with a torch
traceback or, worse, loads a different model silently.
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
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

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
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo_models"
_TMP_PREFIX = ".tmp-install-"
_CHUNK = 4 << 20
_REINSTALL = "reinstall with `spineseg weights --force`"


class WeightsError(Exception):
    """Weights missing, corrupt or not installable; the message is one line naming the path."""


@dataclass
class WeightSet:
    """The two model folders of one release, ready for `NnUNetModel.load`.

    `sha256` maps each verified file (path relative to the release folder) and each installed
    zip (file name) to its SHA-256, for provenance in the per-image status stamps.
    `resolve_weights` always fills both steps; `install_weights` leaves a step None when only
    the other one has been installed so far (a single-zip install).
    """

    root: Path
    release: str
    step1: Path | None
    step2: Path | None
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.step1 is not None and self.step2 is not None


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
    """Files that decide what a Dataset folder predicts: plans, dataset.json, checkpoint."""
    checkpoint = find_checkpoint(dataset_dir)
    trainer_dir = checkpoint.parent.parent
    return [trainer_dir / "plans.json", trainer_dir / "dataset.json", checkpoint]


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
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256_file, paths))


def default_weights_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Per-user weights folder: `$XDG_DATA_HOME/spineseg/weights` or ~/.local/share/..."""
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "spineseg" / "weights"


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


def _datasets_in(folder: Path, release: str, label: str) -> dict[str, Path]:
    """Dataset folders of an unpacked source: directly inside, or under `<release>/`."""
    for candidate in (folder, folder / release):
        found = _dataset_dirs(candidate)
        if found:
            return found
    raise WeightsError(f"{label}: no Dataset101_*/Dataset102_* folder (also not under {release}/)")


# ---------------------------------------------------------------------------------------------
# Manifest


def _read_manifest(release_dir: Path) -> dict:
    path = release_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable manifest ({e}); {_REINSTALL}") from e
    if not _is_manifest(data):
        raise WeightsError(f"{path}: not a SpineSeg weights manifest; {_REINSTALL}")
    return data


def _is_manifest(data: object) -> bool:
    """Shape check, so that a hand-edited manifest fails with a message, not a KeyError."""
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        return False
    for entry in data["datasets"].values():
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            return False
        zip_record = entry.get("zip")
        if zip_record is not None and not (
            isinstance(zip_record, dict) and {"name", "sha256"} <= set(zip_record)
        ):
            return False
        for rec in entry["files"].values():
            if not isinstance(rec, dict) or not {"sha256", "size"} <= set(rec):
                return False
    return True


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _verify(release_dir: Path, datasets: dict[str, Path]) -> dict[str, str]:
    """Hash every model file and compare with the manifest; file name -> SHA-256.

    Folders without a manifest entry (unpacked by hand, the demo models) are hashed for
    provenance only; there is nothing to compare with.
    """
    manifest = _read_manifest(release_dir)
    listed = manifest.get("datasets", {})
    files: list[Path] = []
    expected: dict[Path, dict | None] = {}
    hashes: dict[str, str] = {}
    for ds in datasets.values():
        entry = listed.get(ds.name)
        if entry and entry.get("zip"):
            hashes[entry["zip"]["name"]] = entry["zip"]["sha256"]
        for path in model_files(ds):
            rel = path.relative_to(release_dir).as_posix()
            record = entry["files"].get(rel) if entry else None
            if entry and record is None:
                raise WeightsError(f"{path}: not part of the installed weights; {_REINSTALL}")
            if record and path.stat().st_size != record["size"]:
                raise WeightsError(
                    f"{path}: size {path.stat().st_size} differs from the installed "
                    f"{record['size']} bytes (changed or truncated); {_REINSTALL}"
                )
            files.append(path)
            expected[path] = record
    for path, digest in zip(files, _hash_all(files), strict=True):
        record = expected[path]
        if record and digest != record["sha256"]:
            raise WeightsError(
                f"{path}: SHA-256 differs from {MANIFEST} (file changed); {_REINSTALL}"
            )
        hashes[path.relative_to(release_dir).as_posix()] = digest
    return hashes


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
    shipped in the package are used only when asked for: `demo=True` or the path "demo".
    The root may hold `<release>/Dataset10x_*` (newest release, or `release`) or the Dataset
    folders directly. Every call re-hashes the model files against the install manifest.
    """
    chosen = cli_path if cli_path is not None else env.get(ENV_VAR) or None
    if demo or chosen == "demo" or chosen == Path("demo"):
        root, release_dir, name = DEMO_DIR, DEMO_DIR, DEMO_RELEASE
    else:
        root = Path(chosen) if chosen is not None else default_weights_dir(env)
        release_dir, name = _locate_release(root, release)
    datasets = _dataset_dirs(release_dir)
    for step, prefix in STEP_PREFIXES.items():
        if step not in datasets:
            raise WeightsError(f"{release_dir}: no {prefix}* folder; {_REINSTALL}")
    return WeightSet(
        root=root,
        release=name,
        step1=datasets["step1"],
        step2=datasets["step2"],
        sha256=_verify(release_dir, datasets),
    )


def _locate_release(root: Path, release: str | None) -> tuple[Path, str]:
    """(folder holding the Dataset folders, release name) for a weights root."""
    hint = "install them with `spineseg weights` or point SPINESEG_WEIGHTS at them"
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found; {hint}")
    if _dataset_dirs(root):
        name = _read_manifest(root).get("release") or root.name
        if release is not None and name != release:
            raise WeightsError(f"{root}: holds release {name}, not {release}")
        return root, name
    installed = sorted(
        d.name for d in root.iterdir() if not d.name.startswith(".") and _dataset_dirs(d)
    )
    if release is not None:
        if release not in installed:
            have = ", ".join(installed) or "none"
            raise WeightsError(f"{root}: release {release} not installed (installed: {have})")
        return root / release, release
    if not installed:
        raise WeightsError(f"{root}: no TotalSpineSeg weights inside; {hint}")
    name = DEFAULT_RELEASE if DEFAULT_RELEASE in installed else installed[-1]
    return root / name, name


# ---------------------------------------------------------------------------------------------
# Installing


@dataclass
class _Staged:
    """One Dataset folder unpacked in the temp dir, checked and hashed, not yet in place."""

    folder: Path
    source: str
    zip_record: dict | None
    files: dict[str, dict] = field(default_factory=dict)


def install_weights(
    dest_root: Path,
    *,
    release: str = DEFAULT_RELEASE,
    source: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> WeightSet:
    """Install one release into `dest_root/<release>/` atomically and record its hashes.

    `source`: None downloads the release zips from GitHub; a URL ending in .zip, or a URL
    prefix (file://, http://...) of a folder holding `Dataset10x_..._<release>.zip`; a zip
    file (installs that dataset only; call again for the other); a folder holding the zips;
    or an unpacked folder with Dataset101_*/Dataset102_* (directly or under `<release>/`).
    Everything is unpacked and checked in a temp folder inside `dest_root`, then renamed into
    place, so an interrupted install never leaves a half folder. A file lock serialises
    parallel installs (cluster jobs sharing one weights folder). Downloads skip datasets that
    are already installed and verify, unless `force`.
    """
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    release_dir = dest_root / release
    with FileLock(str(dest_root / ".install.lock")):
        for stale in dest_root.glob(f"{_TMP_PREFIX}*"):  # left by a killed install
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=dest_root, prefix=_TMP_PREFIX) as tmp:
            staged = _stage(Path(tmp), source, release, release_dir, progress, force)
            _commit(staged, release_dir, Path(tmp), release)
    datasets = _dataset_dirs(release_dir)
    hashes: dict[str, str] = {}
    for entry in _read_manifest(release_dir).get("datasets", {}).values():
        if entry.get("zip"):
            hashes[entry["zip"]["name"]] = entry["zip"]["sha256"]
        hashes.update({rel: rec["sha256"] for rel, rec in entry["files"].items()})
    return WeightSet(dest_root, release, datasets.get("step1"), datasets.get("step2"), hashes)


def _stage(
    tmp: Path,
    source: str | Path | None,
    release: str,
    release_dir: Path,
    progress: bool,
    force: bool,
) -> list[_Staged]:
    urls, zips, folder = _classify(source, release)
    if urls and not force:
        urls = [u for u in urls if not _installed_and_valid(release_dir, _name_of(u, release))]
    staged: list[_Staged] = []
    for i, url in enumerate(urls):
        local = _download(url, tmp / f"download-{i}.zip", progress)
        staged += _unpack(local, tmp / f"unpacked-{i}", url, release)
    for i, zpath in enumerate(zips):
        staged += _unpack(zpath, tmp / f"unpacked-zip-{i}", str(zpath.resolve()), release)
    if folder is not None:
        for ds in _datasets_in(folder, release, str(folder)).values():
            copy = tmp / "copied" / ds.name
            shutil.copytree(ds, copy, symlinks=False)
            staged.append(_Staged(copy, str(ds.resolve()), None))
    names = [s.folder.name for s in staged]
    if len(set(names)) != len(names):
        raise WeightsError(f"{source}: the same dataset appears twice ({', '.join(names)})")
    for item in staged:
        files = model_files(item.folder)
        rels = [p.relative_to(item.folder.parent).as_posix() for p in files]
        sizes = [p.stat().st_size for p in files]
        item.files = {
            r: {"sha256": h, "size": s}
            for r, h, s in zip(rels, _hash_all(files), sizes, strict=True)
        }
    return staged


def _classify(source: str | Path | None, release: str) -> tuple[list[str], list[Path], Path | None]:
    """(URLs to download, local zips, unpacked folder) for an install source."""
    if source is None:
        if release not in RELEASES:
            known = ", ".join(RELEASES)
            raise WeightsError(f"release {release}: no download URL known (known: {known})")
        return list(RELEASES[release].values()), [], None
    text = str(source)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        if text.endswith(".zip"):
            return [text], [], None
        names = tuple(RELEASES.get(release, (STEP1, STEP2)))
        return [f"{text.rstrip('/')}/{name}_{release}.zip" for name in names], [], None
    path = Path(source)
    if path.is_file():
        _check_zip_release(path, release)
        return [], [path], None
    if path.is_dir():
        zips = sorted(path.glob(f"Dataset*_{release}.zip"))
        if zips:
            return [], zips, None
        others = sorted(p.name for p in path.glob("Dataset*.zip"))
        if others and not any(_dataset_dirs(d) for d in (path, path / release)):
            raise WeightsError(
                f"{path}: no Dataset*_{release}.zip (found {', '.join(others)}); "
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


def _installed_and_valid(release_dir: Path, name: str) -> bool:
    folder = release_dir / name
    if not folder.is_dir() or name not in _read_manifest(release_dir).get("datasets", {}):
        return False
    try:
        _verify(release_dir, {"this": folder})
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
        raise WeightsError(f"{url}: download failed (HTTP {e.code} {e.reason})") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"{url}: download failed ({reason})") from e
    if total is not None and dest.stat().st_size != total:
        raise WeightsError(f"{url}: download truncated ({dest.stat().st_size} of {total} bytes)")
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
    return [_Staged(ds, origin, record) for ds in datasets.values()]


def _commit(staged: list[_Staged], release_dir: Path, tmp: Path, release: str) -> None:
    """Move checked folders into place and record them; old copies go to the temp dir."""
    if not staged:
        return
    release_dir.mkdir(exist_ok=True)
    manifest = _read_manifest(release_dir) or {"release": release, "datasets": {}}
    manifest.setdefault("datasets", {})
    installed = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for item in staged:
        final = release_dir / item.folder.name
        if final.exists():
            os.replace(final, tmp / f"old-{final.name}")
        os.replace(item.folder, final)
        manifest["datasets"][final.name] = {
            "source": item.source,
            "installed": installed,
            "zip": item.zip_record,
            "files": item.files,
        }
    _write_json_atomic(release_dir / MANIFEST, manifest)


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
