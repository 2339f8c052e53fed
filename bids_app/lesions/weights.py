"""Install, locate and verify a lesion model in nnU-Net's result layout (SCIseg, SCT MS).

A lesion model folder holds one `<Trainer>__<Plans>__<Config>/` folder (directly or one
level down, as release zips unpack) with `plans.json`, `dataset.json` and one or more
`fold_*/checkpoint_final.pth` (else `checkpoint_best.pth`, as SCT's loader does). Every
fold found is used (ensembled). Like the spine weights, the folder carries a
`manifest.json` of SHA-256 hashes checked at every start; a folder without one gets one at
first use (in the per-user cache when the folder is read-only). Errors are one line
(`WeightsError`, exit 78).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bids_app.lesions.labels import read_labels
from bids_app.nnunet.weights.folders import WeightsError, check_json_object
from bids_app.nnunet.weights.install import install_lock
from bids_app.nnunet.weights.manifest import (
    cached_manifest_path,
    file_records_ok,
    hash_all,
    read_manifest,
    records,
    sha256_file,
)
from bids_app.nnunet.weights.releases import DEMO_DIR, MANIFEST, default_weights_dir
from bids_app.plumbing.atomic import write_json_atomic

log = logging.getLogger(__name__)

KIND = "lesion"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
_TMP_PREFIX = ".tmp-lesion-install-"
# The shipped demo lesion model (phantoms only), selected by `--lesion-model demo`.
DEMO_LESION = DEMO_DIR / "lesion" / "model_lesion_demo"


@dataclass(frozen=True)
class LesionWeights:
    """A verified lesion model: its folder, trainer folder, fold checkpoints and hashes."""

    folder: Path
    trainer_dir: Path
    checkpoints: tuple[Path, ...]
    sha256: dict[str, str]  # path relative to `folder` -> SHA-256
    source: str

    @property
    def name(self) -> str:
        return self.folder.name


def default_lesion_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where `spineseg weights --lesion` installs: `<weights folder>/lesion/`."""
    chosen = env.get("SPINESEG_WEIGHTS")
    return (Path(chosen) if chosen else default_weights_dir(env)) / KIND


def find_trainer_dir(folder: Path) -> Path:
    """The one `<Trainer>__<Plans>__<Config>` folder, directly inside or one level down."""
    if not folder.is_dir():
        raise WeightsError(f"{folder}: lesion model folder not found")
    found = sorted(p for p in folder.glob("*__*__*") if p.is_dir()) or sorted(
        p for p in folder.glob("*/*__*__*") if p.is_dir()
    )
    if not found:
        raise WeightsError(
            f"{folder}: no <Trainer>__<Plans>__<Config> folder (nnU-Net result layout) inside"
        )
    if len(found) > 1:
        names = ", ".join(p.relative_to(folder).as_posix() for p in found)
        raise WeightsError(f"{folder}: several nnU-Net result folders ({names}); keep only one")
    return found[0]


def fold_checkpoints(trainer_dir: Path) -> tuple[Path, ...]:
    """One checkpoint per `fold_*` folder (final, else best); at least one."""
    out = []
    for fold in sorted(p for p in trainer_dir.glob("fold_*") if p.is_dir()):
        ckpt = next((fold / n for n in CHECKPOINTS if (fold / n).is_file()), None)
        if ckpt is not None:
            out.append(ckpt)
    if not out:
        raise WeightsError(
            f"{trainer_dir}: no fold_*/checkpoint_final.pth or checkpoint_best.pth inside"
        )
    return tuple(out)


def model_files(folder: Path) -> list[Path]:
    """plans.json, dataset.json (both parsed) and every fold's checkpoint."""
    trainer = find_trainer_dir(folder)
    files = [trainer / "plans.json", trainer / "dataset.json"]
    for path in files:
        check_json_object(path)
    return [*files, *fold_checkpoints(trainer)]


def _manifest(folder: Path, source: str, zip_record: dict | None) -> dict:
    return {
        "kind": KIND,
        "source": source,
        "zip": zip_record,
        "installed": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": records(model_files(folder), folder),
    }


def _read_manifest(path: Path) -> dict | None:
    def is_valid(data: object) -> bool:
        return (
            isinstance(data, dict)
            and data.get("kind") == KIND
            and file_records_ok(data.get("files"))
        )

    return read_manifest(path, is_valid, "a SpineSeg lesion model manifest")


def resolve_lesion_model(path: Path | str, env: Mapping[str, str] = os.environ) -> LesionWeights:
    """Find and verify a lesion model folder (hashes against its manifest); "demo" is the
    shipped demo lesion model."""
    folder = DEMO_LESION if str(path) == "demo" else Path(path)
    files = model_files(folder)
    read_labels(files[1])  # not a lesion model: refused before anything is recorded
    own, cached = folder / MANIFEST, cached_manifest_path(folder, env)
    where = own if own.is_file() else cached
    manifest = _read_manifest(where)
    if manifest is None:
        manifest = _manifest(folder, f"{folder.resolve()} (recorded at first use)", None)
        try:
            write_json_atomic(own, manifest)
            where = own
        except OSError:
            where = cached
            where.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(where, {**manifest, "folder": str(folder.resolve())})
        log.warning(
            "%s: no %s; recorded the SHA-256 of its model files in %s (first use)",
            folder,
            MANIFEST,
            where,
        )
    fix = "reinstall it with `spineseg weights --lesion --from ZIP|DIR`"
    rels = [p.relative_to(folder).as_posix() for p in files]
    for rel, p in zip(rels, files, strict=True):
        record = manifest["files"].get(rel)
        if record is None:
            raise WeightsError(f"{p}: not part of the installed lesion model ({where}); {fix}")
        if p.stat().st_size != record["size"]:
            raise WeightsError(
                f"{p}: size {p.stat().st_size} differs from the installed "
                f"{record['size']} bytes (changed or truncated); {fix}"
            )
    digests = hash_all(files)
    for rel, p, digest in zip(rels, files, digests, strict=True):
        if digest != manifest["files"][rel]["sha256"]:
            raise WeightsError(f"{p}: SHA-256 differs from {where} (file changed); {fix}")
    trainer = find_trainer_dir(folder)
    return LesionWeights(
        folder,
        trainer,
        fold_checkpoints(trainer),
        dict(zip(rels, digests, strict=True)),
        str(manifest.get("source")),
    )


def install_lesion_model(
    source: Path | str, dest_root: Path | None = None, *, force: bool = False
) -> LesionWeights:
    """Install a lesion model from a zip or a folder into `dest_root/<name>/`, atomically.

    `<name>` is the zip's or folder's name. The files are checked (layout, JSON, folds) and
    hashed in a temporary folder inside `dest_root`, then renamed into place.
    """
    src = Path(source)
    dest_root = Path(dest_root) if dest_root is not None else default_lesion_dir()
    if not src.exists():
        raise WeightsError(f"{src}: no such file or folder")
    name = src.name.removesuffix(".zip")
    final = dest_root / name
    if final.exists() and not force:
        raise WeightsError(f"{final}: already installed; pass --force to replace it")
    try:
        with (
            install_lock(dest_root),
            tempfile.TemporaryDirectory(dir=dest_root, prefix=_TMP_PREFIX) as tmp,
        ):
            unpacked, staged = Path(tmp) / "unpacked", Path(tmp) / name
            zip_record = None
            if src.is_file():
                try:
                    with zipfile.ZipFile(src) as zf:
                        zf.extractall(unpacked)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
                    raise WeightsError(f"{src}: corrupt or truncated zip ({e})") from e
                zip_record = {"name": src.name, "sha256": sha256_file(src)}
            else:
                shutil.copytree(src, unpacked, symlinks=False)
                (unpacked / MANIFEST).unlink(missing_ok=True)
            try:  # the model root is the trainer folder's parent (a zip's top folder)
                os.replace(find_trainer_dir(unpacked).parent, staged)
                manifest = _manifest(staged, str(src.resolve()), zip_record)
            except WeightsError as e:  # name the user's file, not the staged copy
                text = str(e).replace(str(staged), str(src)).replace(str(unpacked), str(src))
                raise WeightsError(text) from e
            write_json_atomic(staged / MANIFEST, manifest)
            if final.exists():
                os.replace(final, Path(tmp) / "old")
            os.replace(staged, final)
    except OSError as e:
        raise WeightsError(f"{e.filename or dest_root}: {e.strerror or e}") from e
    return resolve_lesion_model(final)


def run_lesion_weights(source: str | None, dest: Path | None, *, verify: bool, force: bool) -> int:
    """`spineseg weights --lesion`: install from `source`, or verify the folder `dest`."""
    from bids_app.plumbing.errors import ExitCode, UserError
    from bids_app.plumbing.logs import say

    try:
        if verify:
            if dest is None:
                raise UserError(ExitCode.USAGE, "--lesion --verify needs --dest MODEL_DIR")
            weights = resolve_lesion_model(Path(dest).expanduser())
            say(f"lesion model OK: {weights.folder} ({len(weights.checkpoints)} fold(s))")
        else:
            if source is None:
                raise UserError(
                    ExitCode.USAGE,
                    "--lesion needs --from ZIP|DIR (lesion models are not downloaded)",
                )
            weights = install_lesion_model(source, dest, force=force)
            say(f"installed lesion model {weights.name} in {weights.folder}")
            say(f"use it with --lesion-model {weights.folder}")
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    say(*(f"  {sha}  {name}" for name, sha in sorted(weights.sha256.items())))
    return ExitCode.OK
