"""The layout of a weights folder: `Dataset101_*`/`Dataset102_*` folders, each holding one
`<Trainer>__<Plans>__<Config>/fold_0` with its checkpoint, plans and dataset.json; the error
every weights problem raises and the verified set a run gets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bids_app.nnunet.weights.releases import REINSTALL, STEP_PREFIXES

log = logging.getLogger(__name__)


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
        check_json_object(path)
    return files


def check_json_object(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: missing") from e
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a JSON object")


def dataset_dirs(folder: Path) -> dict[str, Path]:
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


def both_steps(release_dir: Path) -> dict[str, Path]:
    datasets = dataset_dirs(release_dir)
    for step, prefix in STEP_PREFIXES.items():
        if step not in datasets:
            raise WeightsError(f"{release_dir}: no {prefix}* folder; {REINSTALL}")
    return datasets


def datasets_in(folder: Path, release: str, label: str) -> dict[str, Path]:
    """Dataset folders of an unpacked source: directly inside, or under `<release>/`."""
    for candidate in (folder, folder / release):
        found = dataset_dirs(candidate)
        if found:
            return found
    raise WeightsError(f"{label}: no Dataset101_*/Dataset102_* folder (also not under {release}/)")
