"""Manual corrections: find them in a BIDS derivatives folder, match them to images, check them.

Two kinds, recognised by their names (entities in any order, the source suffix either kept as
a bare part, as SCT and neuropoly's `derivatives/labels` do, or as `desc-<suffix>`, as
SpineSeg names its outputs):

- disc points, `<source>_label-discs_dlabel.nii.gz` (also `label-disc`, `labels-disc`, or no
  `_dlabel`): one voxel per disc valued by SCT's disc number (3 = C2-C3 ... 25 = L5-S, as
  `sct_label_utils` writes them; 1 and 2, C1 and C1-C2, have no disc here and are ignored) or
  by the final disc label id (63 ... 100, TotalSpineSeg's localizer style);
- a corrected final segmentation, `<prefix>_seg-spine_desc-<suffix>_dseg.nii.gz` (the name
  of SpineSeg's own output), whose JSON sidecar says it is manual (`GeneratedBy` with
  `"Name": "Manual"`, or `"Manual": true`): SpineSeg's outputs say `"Manual": false`, so a
  copy of them is never taken for a correction.

A problem with a correction is one line naming the file (`CorrectionError`); the image it
targets is then left as it is. Knows nothing of networks: it hands over arrays and images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from bids_app.bids.stamps import source_stem
from bids_app.plumbing.labels import DISCS, FINAL_IDS, FIRST_DISC_LEVEL, LEVEL_DISCS

DEFAULT_DIR = Path("derivatives") / "labels"  # beside the raw data (SCT/neuropoly convention)
DISCS_KIND, SEG_KIND = "discs", "seg"
KIND_NAMES = {DISCS_KIND: "disc points", SEG_KIND: "corrected segmentation"}
# SCT disc number -> final disc label id (docs/method.md §4.6: 3 = C2-C3 ... 25 = L5-S).
SCT_DISCS: dict[int, int] = {FIRST_DISC_LEVEL + i: d for i, d in enumerate(LEVEL_DISCS)}
SCT_WITHOUT_DISC = (1, 2)  # C1 and C1-C2: TotalSpineSeg has no disc label for them
# Each point becomes a ball of this radius in the localizer: it must overlap its disc as
# the networks segmented it, while disc centres are 12 mm or more apart.
POINT_RADIUS_MM = 4.0
GRID_TOLERANCE_MM = 1e-3
_DERIVATIVE_KEYS = frozenset({"label", "labels", "seg", "desc", "res", "space"})


class CorrectionError(Exception):
    """One line: the correction file and what is wrong with it."""


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


# ---------------------------------------------------------------------------------------------
# Checks


def _load(corr: Correction, img: nib.Nifti1Image) -> np.ndarray:
    """The correction's voxels, refused unless it lies on the image's grid."""
    try:
        loaded = nib.load(str(corr.path))
        data = np.asanyarray(getattr(loaded, "dataobj", None))
    except Exception as e:  # nibabel raises many kinds for a damaged file
        raise CorrectionError(f"{corr.path}: cannot read it ({str(e).splitlines()[0]})") from e
    if not isinstance(loaded, nib.Nifti1Image):
        raise CorrectionError(f"{corr.path}: not a NIfTI image")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    shape = img.shape[:3]
    if data.shape != shape:
        raise CorrectionError(
            f"{corr.path}: on another grid than its image ({'x'.join(map(str, data.shape))} "
            f"voxels, the image has {'x'.join(map(str, shape))})"
        )
    theirs, ours = nib.aff2axcodes(loaded.affine), nib.aff2axcodes(img.affine)
    if theirs != ours:
        raise CorrectionError(
            f"{corr.path}: another orientation than its image ({''.join(map(str, theirs))}, "
            f"the image is {''.join(map(str, ours))})"
        )
    shift = _max_corner_shift(loaded.affine, img.affine, shape)
    if shift > GRID_TOLERANCE_MM:
        raise CorrectionError(
            f"{corr.path}: on another grid than its image (voxels placed up to {shift:.2f} mm "
            "away: another affine)"
        )
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise CorrectionError(f"{corr.path}: label values must be whole numbers")
    return data.astype(np.int64)


def _max_corner_shift(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest distance (mm) between where two affines put the corners of the grid."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1)
    pts = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs((a - b) @ pts)[:3].max())


def _unknown(corr: Correction, values: Iterable[int], allowed: str) -> CorrectionError:
    shown = ", ".join(str(v) for v in sorted(values)[:8])
    return CorrectionError(f"{corr.path}: unknown label value(s) {shown} ({allowed})")


def corrected_labels(corr: Correction, img: nib.Nifti1Image) -> np.ndarray:
    """The corrected final labels (uint8, on the image's grid), checked."""
    data = _load(corr, img)
    present = {int(v) for v in np.unique(data)} - {0}
    unknown = present - FINAL_IDS
    if unknown:
        raise _unknown(corr, unknown, "a final segmentation holds the ids of seg-spine_dseg.tsv")
    if not present:
        raise CorrectionError(f"{corr.path}: the corrected segmentation is empty")
    _require_manual(corr)
    return data.astype(np.uint8)


def _require_manual(corr: Correction) -> None:
    """A corrected segmentation must say it is manual: SpineSeg's own outputs do not."""
    sidecar = corr.path.with_name(source_stem(corr.path.name) + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and is_manual(meta):
        return
    raise CorrectionError(
        f"{corr.path}: its sidecar {sidecar.name} does not mark it as manual (add "
        '"GeneratedBy": [{"Name": "Manual"}]); an automatic result is never read back'
    )


def is_manual(meta: Mapping[str, object]) -> bool:
    """A sidecar that says a human made the file."""
    generated = meta.get("GeneratedBy")
    names = (
        [g.get("Name") for g in generated if isinstance(g, Mapping)]
        if isinstance(generated, list)
        else []
    )
    return "Manual" in names or meta.get("Manual") is True


def disc_points(corr: Correction, img: nib.Nifti1Image) -> dict[int, np.ndarray]:
    """Final disc id -> scanner position (RAS mm) of its point, checked.

    Values are SCT disc numbers (1-25) or final disc ids (63-100), never a mix. A disc
    drawn over several voxels counts at their centre. Discs must go down the spine as
    their number grows (scanner z decreasing).
    """
    data = _load(corr, img)
    present = sorted({int(v) for v in np.unique(data)} - {0})
    if not present:
        raise CorrectionError(f"{corr.path}: no disc point in the file")
    if set(present) <= set(SCT_DISCS) | set(SCT_WITHOUT_DISC):
        to_disc = SCT_DISCS
    elif set(present) <= set(DISCS):
        to_disc = {d: d for d in DISCS}
    else:
        raise _unknown(
            corr,
            [v for v in present if v not in SCT_DISCS and v not in DISCS],
            "disc points are SCT disc numbers 1-25 or disc label ids 63-100, not both",
        )
    points: dict[int, np.ndarray] = {}
    for value in present:
        if value not in to_disc:
            continue
        ijk = np.argwhere(data == value).mean(axis=0)
        points[to_disc[value]] = nib.affines.apply_affine(img.affine, ijk)
    if not points:
        raise CorrectionError(f"{corr.path}: only C1 / C1-C2 points, which mark no disc here")
    order = sorted(points)
    for upper, lower in pairwise(order):
        if points[lower][2] >= points[upper][2]:
            raise CorrectionError(
                f"{corr.path}: disc points out of order ({DISCS[lower]} is not below "
                f"{DISCS[upper]})"
            )
    return points


def points_localizer(points: Mapping[int, np.ndarray]) -> nib.Nifti1Image:
    """A localizer image (final disc ids) with a ball around each point, on a 1 mm RAS grid
    that just holds them: the engine resamples it like any localizer's labels."""
    r = int(np.ceil(POINT_RADIUS_MM)) + 1
    pts = np.array(list(points.values()))
    origin = np.floor(pts.min(axis=0)) - r
    shape = tuple(int(n) for n in np.ceil(pts.max(axis=0) - origin) + r + 1)
    data = np.zeros(shape, np.uint8)
    ball = np.indices((2 * r + 1,) * 3).reshape(3, -1).T - r  # offsets around a voxel
    for disc, p in points.items():
        centre = np.round(p - origin).astype(int)
        voxels = centre + ball
        near = np.linalg.norm(voxels + origin - p, axis=1) <= POINT_RADIUS_MM
        data[tuple(voxels[near].T)] = disc
    affine = np.eye(4)
    affine[:3, 3] = origin
    return nib.Nifti1Image(data, affine)


def options_value(found: Mapping[str, Correction]) -> str | None:
    """The `corrections` field of an image's options: the hash of its correction files."""
    if not found:
        return None
    blob = "".join(f"{kind}:{found[kind].sha256};" for kind in sorted(found))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
