"""Manual corrections: find them in a BIDS derivatives folder and match them to images.

Two kinds, recognised by their names (entities in any order, the source suffix either kept as
a bare part, as SCT and neuropoly's `derivatives/labels` do, or as `desc-<suffix>`, as
SpineSeg names its outputs):

- disc points, `<source>_label-discs_dlabel.nii.gz` (also `label-disc`, `labels-disc`, or no
  `_dlabel`): one voxel per disc valued by SCT's disc number (3 = C2-C3 ... 25 = L5-S, as
  `sct_label_utils` writes them; 1 and 2, C1 and C1-C2, have no disc here and are ignored) or
  by the final disc label id (63 ... 100, TotalSpineSeg's localizer style);
- a corrected final segmentation, `<prefix>_seg-spine_desc-<suffix>_dseg.nii.gz` (the name
  of SpineSeg's own output), whose JSON sidecar says it is manual (see `checking`).

Only names are read here; `checking` opens the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bids_app.bids.stamps import source_stem

DEFAULT_DIR = Path("derivatives") / "labels"  # beside the raw data (SCT/neuropoly convention)
DISCS_KIND, SEG_KIND = "discs", "seg"
KIND_NAMES = {DISCS_KIND: "disc points", SEG_KIND: "corrected segmentation"}
_DERIVATIVE_KEYS = frozenset({"label", "labels", "seg", "desc", "res", "space"})


@dataclass(frozen=True)
class Correction:
    """One correction file and the source image it is meant for."""

    kind: str  # DISCS_KIND or SEG_KIND
    path: Path
    source: str  # BIDS-relative path of the source image without extension

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def record(self, root: Path) -> dict[str, str]:
        """What the stamp keeps: kind, file (relative to the corrections folder), hash."""
        return {"kind": self.kind, "file": self.rel(root), "sha256": self.sha256}

    def rel(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


def resolve_dir(value: str | None, bids_dir: Path, output_dir: Path) -> Path | None:
    """The corrections folder: `value`, else `bids_dir/derivatives/labels` when it exists
    (None for 'none'). ValueError for a missing folder or SpineSeg's own output folder."""
    if value is not None and value.lower() == "none":
        return None
    if value is None:
        default = Path(bids_dir) / DEFAULT_DIR
        return default.resolve() if default.is_dir() else None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{value}: not a folder")
    if path == Path(output_dir).resolve():
        raise ValueError(f"{value}: is the output folder; SpineSeg's results are not corrections")
    return path


def source_uri(path: Path, root: Path, bids_dir: Path) -> str:
    """BIDS URI of a correction file for `Sources`: `bids:raw:` when the corrections live in
    the raw dataset (derivatives/labels), else `bids:corrections:` + its path in `root`."""
    try:
        return f"bids:raw:{path.resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"
    except ValueError:
        return f"bids:corrections:{path.relative_to(root).as_posix()}"


def _parse(stem: str) -> tuple[dict[str, str], str | None, str] | None:
    """(source entities, source suffix, kind) of a correction file name, None if not one."""
    parts = stem.split("_")
    suffix = parts[-1] if "-" not in parts[-1] else ""
    pairs = parts[:-1] if suffix else parts
    entities: dict[str, str] = {}
    bare: list[str] = []
    for part in pairs:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
        else:
            bare.append(part)
    label = entities.get("label", entities.get("labels"))
    if label in ("disc", "discs") and suffix in ("dlabel", ""):
        kind = DISCS_KIND
    elif entities.get("seg") == "spine" and suffix == "dseg":
        kind = SEG_KIND
    else:
        return None
    if len(bare) > 1 or "sub" not in entities:
        return None
    source_suffix = bare[0] if bare else entities.get("desc")
    raw = {k: v for k, v in entities.items() if k not in _DERIVATIVE_KEYS}
    return raw, source_suffix, kind


def _key(entities: Mapping[str, str], suffix: str | None) -> tuple:
    return (tuple(sorted(entities.items())), suffix)


def _source_key(stem: str) -> tuple:
    """Entities and suffix of a source file name ("sub-01_acq-sag_T2w")."""
    *pairs, suffix = stem.split("_")
    return _key(dict(p.split("-", 1) for p in pairs if "-" in p), suffix)


def find_corrections(root: Path) -> list[Correction]:
    """Every correction file under `root` (a BIDS derivatives folder), sorted by path.

    Files of other kinds (cord masks, lesion labels) are not corrections and are ignored.
    """
    found = []
    for path in sorted(Path(root).glob("sub-*/**/*.nii*")):
        stem = source_stem(path.name)
        parsed = _parse(stem)
        if parsed is None:
            continue
        entities, suffix, kind = parsed
        order: list[str] = [e for e in ("sub", "ses") if e in entities]
        order += [e for e in entities if e not in ("sub", "ses")]
        name = "_".join([*(f"{k}-{entities[k]}" for k in order), suffix or ""])
        rel_dir = path.parent.relative_to(root).as_posix()
        found.append(Correction(kind, path, f"{rel_dir}/{name}"))
    return found


@dataclass
class Matched:
    """Corrections per source image (its `relpath` without extension), and the lines of
    those that could not be matched (no such image, two of one kind for one image)."""

    by_source: dict[str, dict[str, Correction]]
    problems: list[str]


def match(
    corrections: Sequence[Correction],
    root: Path,
    bids_dir: Path,
    sources: Iterable[str],
) -> Matched:
    """Match corrections to the selected source images by BIDS entities and folder.

    A correction for an image of the dataset that is not selected is left for its own run;
    one for an image that does not exist in `bids_dir` is a problem line.
    """
    wanted: dict[tuple, str] = {}
    for rel in sources:
        posix = PurePosixPath(rel)
        stem = source_stem(posix.name)
        wanted[(posix.parent.as_posix(), _source_key(stem))] = f"{posix.parent}/{stem}"
    grouped: dict[str, dict[str, list[Correction]]] = {}
    problems: list[str] = []
    for corr in corrections:
        folder, _, stem = corr.source.rpartition("/")
        source = wanted.get((folder, _source_key(stem)))
        if source is not None:
            grouped.setdefault(source, {}).setdefault(corr.kind, []).append(corr)
        elif not any(Path(bids_dir, corr.source + ext).is_file() for ext in (".nii.gz", ".nii")):
            problems.append(
                f"{corr.path}: a correction for {corr.source}.nii[.gz], which is not in "
                f"{bids_dir}; ignored"
            )
    out: dict[str, dict[str, Correction]] = {}
    for source, kinds in grouped.items():
        for kind, found in kinds.items():
            if len(found) == 1:
                out.setdefault(source, {})[kind] = found[0]
            else:
                names = ", ".join(c.path.name for c in found)
                problems.append(
                    f"{found[0].path.parent}: {len(found)} {KIND_NAMES[kind]} files for "
                    f"{source} ({names}); none used until one is left"
                )
    return Matched(out, problems)


def options_value(found: Mapping[str, Correction]) -> str | None:
    """The `corrections` field of an image's options: the hash of its correction files."""
    if not found:
        return None
    blob = "".join(f"{kind}:{found[kind].sha256};" for kind in sorted(found))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
