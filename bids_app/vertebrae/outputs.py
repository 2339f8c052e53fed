"""Vertebral-body outputs of one image, as BIDS derivatives beside its spine outputs.

- `<prefix>_seg-vertparts_desc-<suffix>_dseg.nii.gz` (+ .json): SPINEPS subregion ids on the
  final labels' grid (values in the root `seg-vertparts_dseg.tsv`); with seg-spine, every
  vertebra voxel has a level and a part;
- `<prefix>_seg-vertparts_desc-<suffix>_morphometry.tsv` (+ .json): one row per vertebra
  (heights, ratios, Genant grade and shape) then one per disc (slip, Meyerding grade);
  columns `heights.LEVEL_COLUMNS`, units in the sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bids_app import __version__
from bids_app.bids.derivatives import bids_prefix, entity_name, write_sidecar
from bids_app.bids.stamps import source_stem
from bids_app.plumbing.atomic import (
    save_nifti_atomic,
    write_shared,
    write_text_atomic,
)
from bids_app.plumbing.labels import label_hex
from bids_app.qc.records import tsv_text
from bids_app.vertebrae.heights import LEVEL_COLUMNS
from bids_app.vertebrae.parts import ARCH_MM, ENDPLATE_MM, PART_NAMES
from bids_app.vertebrae.qc import LEVELS
from bids_app.vertebrae.run import VertebraResult

LUT_NAME = "seg-vertparts_dseg.tsv"
PARTS_DESCRIPTION = (
    "Vertebral subregions with SPINEPS's label ids (TPTBox Location: 41 arcus vertebrae, 42 "
    "spinous process, 43/44 costal processes left/right, 49 vertebral body, 52/53 superior/"
    "inferior endplates), cut from the final labels (Sources) on their grid: body = the "
    "vertebra's voxels over its discs' contact footprints, endplates = body voxels within "
    f"{ENDPLATE_MM:g} mm of its ends along the local spine axis, spinous / costal processes "
    f"= the rest more than {ARCH_MM:g} mm behind / lateral to the canal, arcus = all else. "
    "Articular processes (45-48) are not separated from the arcus."
)


def vertebra_paths(relpath: str, suffix: str | None) -> dict[str, str]:
    """Output-relative paths of an image's parts image and table (no sidecars)."""
    src = PurePosixPath(relpath)
    prefix = bids_prefix(src.name, suffix) if suffix else source_stem(src.name)
    names = {
        "parts": entity_name(prefix, "dseg", seg="vertparts", desc=suffix),
        "table": entity_name(prefix, "morphometry", ".tsv", seg="vertparts", desc=suffix),
    }
    return {k: (src.parent / v).as_posix() for k, v in names.items()}


def parts_lut() -> bytes:
    """`seg-vertparts_dseg.tsv`: index, name, abbreviation, colour of every part id."""
    lines = ["index\tname\tabbreviation\tcolor"]
    lines += [f"{i}\t{name}\t{abbr}\t{label_hex(i)}" for i, (name, abbr) in PART_NAMES.items()]
    return ("\n".join(lines) + "\n").encode()


def columns_sidecar() -> dict:
    """Description, units and (grades, shapes) values of every column of the table."""
    return {
        c.name: {"Description": c.description}
        | ({"Units": c.units} if c.units else {})
        | ({"Levels": LEVELS[c.name]} if c.name in LEVELS else {})
        for c in LEVEL_COLUMNS
    }


def write_vertebra_outputs(
    output_dir: Path,
    relpath: str,
    suffix: str | None,
    result: VertebraResult,
    *,
    sources: Sequence[str],
) -> list[str]:
    """Write the parts image, the table, their sidecars and the root label table; returns the
    output-relative paths written (the root table is shared, not listed)."""
    output_dir = Path(output_dir)
    paths = vertebra_paths(relpath, suffix)
    write_shared(output_dir / LUT_NAME, parts_lut())
    parts = output_dir / paths["parts"]
    save_nifti_atomic(result.parts, parts)
    meta = {
        "Description": PARTS_DESCRIPTION,
        "Sources": list(sources),
        "SpatialReference": sources[0],
        "Manual": False,
        "SpineSegVersion": __version__,
    }
    table = output_dir / paths["table"]
    write_text_atomic(table, tsv_text([c.name for c in LEVEL_COLUMNS], result.measures.rows))
    written = [parts, write_sidecar(parts, meta), table, write_sidecar(table, columns_sidecar())]
    return [p.relative_to(output_dir).as_posix() for p in written]
