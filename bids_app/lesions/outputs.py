"""Lesion outputs of one image, as BIDS derivatives beside its spine outputs.

- `<prefix>_label-lesion_desc-<suffix>_mask.nii.gz` (+ .json): the binary lesion mask on
  the input grid, with its sources, model (folder, folds, SHA-256) and SpineSeg version;
- `<prefix>_seg-lesion_desc-<suffix>_morphometry.tsv` (+ .json): one row per lesion
  (columns: `bids_app.lesions.measures.COLUMNS`), a header only when there is no lesion;
- `<prefix>_seg-lesionlevels_desc-<suffix>_morphometry.tsv` (+ .json): lesion load per
  vertebral level.

The TSVs follow the spine morphometry tables (`*_morphometry.*` is in .bidsignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bids_app import __version__
from bids_app.bids.derivatives import bids_prefix, entity_name, write_sidecar
from bids_app.bids.stamps import source_stem
from bids_app.lesions.measures import COLUMNS, LOAD_COLUMNS
from bids_app.lesions.run import MARGIN_MM, LesionResult
from bids_app.lesions.weights import LesionWeights
from bids_app.plumbing.atomic import save_nifti_atomic, write_text_atomic
from bids_app.qc.records import tsv_text

MASK_DESCRIPTION = (
    "Spinal cord lesions (1) predicted by the lesion model named in Model, on the source "
    "image's grid; one connected component per row of the seg-lesion morphometry table."
)


def lesion_paths(relpath: str, suffix: str | None) -> dict[str, str]:
    """Output-relative paths of an image's lesion files: mask, table, levels (no sidecars).

    `suffix` None: a file outside BIDS (`spineseg segment`), named after its whole stem.
    """
    src = PurePosixPath(relpath)
    prefix = bids_prefix(src.name, suffix) if suffix else source_stem(src.name)
    names = {
        "mask": entity_name(prefix, "mask", label="lesion", desc=suffix),
        "table": entity_name(prefix, "morphometry", ".tsv", seg="lesion", desc=suffix),
        "levels": entity_name(prefix, "morphometry", ".tsv", seg="lesionlevels", desc=suffix),
    }
    return {k: (src.parent / v).as_posix() for k, v in names.items()}


def model_record(weights: LesionWeights) -> dict:
    """The lesion model's provenance, for sidecars, stamps and the resume decision."""
    return {
        "Name": weights.name,
        "Source": weights.source,
        "Folds": [p.parent.name for p in weights.checkpoints],
        "SHA256": dict(sorted(weights.sha256.items())),
    }


def _columns_sidecar(columns: dict[str, tuple[str, str | None]]) -> dict:
    out: dict = {}
    for name, (description, unit) in columns.items():
        out[name] = {"Description": description} | ({"Units": unit} if unit else {})
    return out


def write_lesion_outputs(
    output_dir: Path,
    relpath: str,
    suffix: str | None,
    result: LesionResult,
    weights: LesionWeights,
    *,
    sources: Sequence[str],
    warnings: Sequence[str] = (),
) -> list[str]:
    """Write the mask, the two tables and their sidecars; returns output-relative paths.

    `sources`: the source image (also the spatial reference), then the spine labels the
    levels came from, as URIs (BIDS URIs in a participant run).
    """
    paths = lesion_paths(relpath, suffix)
    mask = Path(output_dir) / paths["mask"]
    save_nifti_atomic(result.mask, mask)
    meta = {
        "Description": MASK_DESCRIPTION,
        "Sources": list(sources),
        "SpatialReference": sources[0],
        "Manual": False,
        "Model": model_record(weights),
        "ModelInput": "source image in RAS orientation on SpineSeg's 1 mm grid, cropped to "
        f"the spinal canal of the spine labels + {MARGIN_MM} mm",
        "SpineSegVersion": __version__,
        "Device": result.device,
        "Warnings": list(warnings),
    }
    written = [mask, write_sidecar(mask, meta)]
    for key, columns, rows in (
        ("table", COLUMNS, result.report.rows),
        ("levels", LOAD_COLUMNS, result.report.load),
    ):
        path = Path(output_dir) / paths[key]
        write_text_atomic(path, tsv_text(list(columns), rows))
        written += [path, write_sidecar(path, _columns_sidecar(columns))]
    return [p.relative_to(output_dir).as_posix() for p in written]
