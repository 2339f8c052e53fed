"""Test cases: phantoms, real scans of shared/data or any NIfTI, materialised as input files."""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from .config import DATA

DEFAULT_CASES = (
    "phantom:5101:cervical",
    "phantom:5102:lumbar",
    # Issue 29: step-1 labels differed at the inferior edge of a lumbar phantom tilted so.
    "phantom:5103:lumbar:iso1:RAS:T2w:oblique=8,0,5",
    "real:sct_testing_data/t2/t2.nii.gz",
    "real:sct_tutorial_data/single_subject/data/t2_lumbar/t2_lumbar.nii.gz",
)


@dataclass
class Case:
    """An input image plus, for phantoms, its exact labels on the same grid."""

    spec: str
    name: str  # file-name-safe id, also the image file name stem
    image: Path
    truth: Path | None = None
    loc: Path | None = None  # localizer labels given to both tools (`--loc`)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def real_scans(manifest: Path = DATA / "MANIFEST.tsv") -> list[str]:
    """Every image (not label map) listed in shared/data/MANIFEST.tsv, as `real:` specs."""
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [f"real:{r['local_path']}" for r in rows if r["label_values"].startswith("image")]


def _phantom_options(parts: list[str], spec: str) -> tuple[dict, bool]:
    """Positional FOV/VOXEL/AXCODES/CONTRAST, then `lr=MM`, `oblique=X,Y,Z` (degrees) and
    `loc` (give the exact labels to both tools as a localizer) in any order."""
    positional = [p for p in parts if "=" not in p and p != "loc"]
    acq: dict = dict(zip(("fov", "voxel", "axcodes", "contrast"), positional, strict=False))
    if len(positional) > 4:
        raise SystemExit(f"error: {spec}: too many fields")
    for part in (p for p in parts if "=" in p):
        key, _, value = part.partition("=")
        try:
            if key == "lr":
                acq["lr_extent"] = float(value)
            elif key == "oblique":
                acq["oblique_deg"] = tuple(float(v) for v in value.split(","))
                if len(acq["oblique_deg"]) != 3:
                    raise ValueError("three angles expected")
            else:
                raise SystemExit(f"error: {spec}: unknown option {key!r} (lr=, oblique=, loc)")
        except ValueError as err:
            raise SystemExit(f"error: {spec}: {part}: {err}") from None
    return acq, "loc" in parts


def prepare_case(spec: str, inputs: Path, truth_dir: Path | None = None) -> Case:
    """Materialise a case spec into inputs/<name>.nii.gz.

    Specs: `phantom:SEED[:FOV[:VOXEL[:AXCODES[:CONTRAST]]]][:lr=MM][:oblique=X,Y,Z][:loc]`
    (defaults whole, iso1, RAS, T2w), `real:<path under shared/data>`, `file:<path>`.
    A phantom's exact labels go to `truth_dir` (default: beside the image) as
    `<name>_truth.nii.gz`; with `loc` the same file is the localizer of both tools.
    """
    inputs.mkdir(parents=True, exist_ok=True)
    kind, _, rest = spec.partition(":")
    if kind == "phantom":
        from bids_app.phantom.render import Acquisition, render_phantom

        parts = rest.split(":")
        seed = int(parts[0])
        acq, use_loc = _phantom_options(parts[1:], spec)
        name = _safe(f"phantom_{rest}")
        ph = render_phantom(seed, Acquisition(**acq))
        truth_dir = truth_dir or inputs
        truth_dir.mkdir(parents=True, exist_ok=True)
        image, truth = inputs / f"{name}.nii.gz", truth_dir / f"{name}_truth.nii.gz"
        nib.save(ph.image, image)
        nib.save(ph.labels, truth)
        return Case(spec, name, image, truth, truth if use_loc else None)
    if kind in ("real", "file"):
        src = DATA / rest if kind == "real" else Path(rest)
        if not src.is_file():
            raise SystemExit(f"error: {spec}: {src} does not exist")
        name = _safe(f"{kind}_{rest.removesuffix('.gz').removesuffix('.nii')}")
        image = inputs / f"{name}.nii.gz"
        # The reference renames inputs by regex on ".nii.gz"; a plain compressed copy with a
        # safe name keeps both tools on the same file and the same output name.
        if src.suffix == ".nii":
            nib.save(nib.load(src), image)
        else:
            shutil.copyfile(src, image)
        return Case(spec, name, image)
    raise SystemExit(f"error: unknown case spec {spec!r} (phantom:, real: or file:)")
