"""QC of one segmented image: previews, morphometry, flags, and the qc.json that ties them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from bids_app import __version__
from bids_app.bids.derivatives import bids_prefix, image_output_paths
from bids_app.plumbing import labels as L
from bids_app.plumbing.atomic import write_json_atomic, write_text_atomic
from bids_app.qc import alignment, measures, plausibility, previews
from bids_app.qc import flags as F
from bids_app.qc.flags import Thresholds
from bids_app.qc.geometry import LabelGeometry, image_data, load_nifti
from bids_app.qc.records import QCPaths, entities, tsv_text


def _geometry_summary(img: nib.Nifti1Image) -> dict[str, object]:
    zooms = [round(float(z), 4) for z in img.header.get_zooms()[:3]]
    return {
        "shape": [int(n) for n in img.shape[:3]],
        "voxel_size_mm": zooms,
        "orientation": "".join(nib.aff2axcodes(img.affine)),
    }


def step1_overlay(root: Path, source: str, suffix: str) -> LabelGeometry | None:
    """Step-1 labels written next to the final ones, for the previews of a step-1-only image.

    Cord, canal, C1 and the discs are drawn as they are; label 50 there is every vertebra
    below C1, so it is drawn but not named.
    """
    path = root / image_output_paths(source, suffix, iso=False)[("step1", False)]
    if not path.is_file():
        return None
    try:
        return LabelGeometry.from_image(load_nifti(path))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):
        return None


def _write_previews(
    paths: QCPaths,
    image: nib.Nifti1Image,
    geom: LabelGeometry | None,
    levels: nib.Nifti1Image | None,
    untagged: frozenset[int] = frozenset(),
    angles: dict[str, object] | None = None,
) -> dict[str, str | None]:
    """Draw the previews; a stale axial strip (no discs) or curvature figure (no sagittal
    angle measured in `angles`) is removed."""
    data = image_data(image, np.float32)
    marks = None
    if levels is not None:
        marks = (np.asanyarray(levels.dataobj).astype(np.uint8), np.asarray(levels.affine, float))
    view = previews.sagittal(data, image.affine, geom, marks, untagged)
    view.save(paths.sagittal)
    strip = previews.axial_strip(data, image.affine, geom) if geom is not None else None
    drawn = alignment.drawn_angles(geom, angles) if geom is not None and angles else []
    for path, picture in (
        (paths.axial, strip),
        (
            paths.curvature,
            previews.curvature(view, alignment.centroid_line(geom), drawn)
            if geom is not None and drawn
            else None,
        ),
    ):
        if picture is None:
            path.unlink(missing_ok=True)
        else:
            picture.save(path)
    return _existing_figures(paths)


def _existing_figures(paths: QCPaths) -> dict[str, str | None]:
    return {
        kind: paths.rel(path) if path.is_file() else None
        for kind, path in (
            ("sagittal", paths.sagittal),
            ("axial", paths.axial),
            ("curvature", paths.curvature),
        )
    }


def write_image_qc(
    image: nib.Nifti1Image | None,
    final: nib.Nifti1Image | None,
    levels: nib.Nifti1Image | None,
    *,
    output_dir: Path,
    source: str,
    suffix: str,
    landmarks: Sequence[str],
    thresholds: Thresholds | None = None,
    missing_reason: str = "no final label image",
) -> dict:
    """Previews, morphometry TSV/JSON and qc.json of one image; returns a summary.

    `image` is the source image (None when it cannot be read: previews are then left as
    they are), `final` the final labels and `levels` the level markers, each on its own grid.
    `source` is the BIDS path of the source image ("sub-01/anat/sub-01_T2w.nii.gz"): every
    QC file is named and placed after it, by `bids.derivatives`. The summary
    holds the written files relative to output_dir ("outputs"), the figures, the flags and
    the number of labels found. `missing_reason` explains a None `final` in its flag (for
    example a step-1-only run).
    """
    th = thresholds or Thresholds()
    paths = QCPaths.of(output_dir, source, suffix)
    stem = bids_prefix(PurePosixPath(source).name, suffix)
    ents = entities(stem)
    written_geom = LabelGeometry.from_image(final) if final is not None else None
    # What counts as present (fragments erased): every table, angle and preview reads it.
    geom = plausibility.counted(written_geom, th) if written_geom is not None else None
    written: list[Path] = []
    level_ids = plausibility.level_labels(geom, th) if geom is not None else []
    angles = (
        alignment.alignment(geom, not F.landmark_flags(landmarks))
        if geom is not None and level_ids
        else None
    )

    if image is not None:
        shown, preview_note = geom, None
        if geom is None:
            shown = step1_overlay(paths.root, source, suffix)
            if shown is not None:
                preview_note = (
                    "No final labels: the previews show the step-1 labels (cord, canal, C1, "
                    "discs; every other vertebra in one colour, not named)."
                )
        untagged = frozenset({L.SACRUM}) if shown is not geom else frozenset()
        figures = _write_previews(
            paths, image, shown, levels, untagged, angles if shown is geom else None
        )
        written += [paths.root / p for p in figures.values() if p]
    else:
        figures = _existing_figures(paths)
        preview_note = "source image not available: previews not redrawn"

    rows = measures.measure(geom) if geom is not None and geom.present else []
    if rows:
        write_text_atomic(paths.morphometry, tsv_text(measures.COLUMN_NAMES, rows))
        write_json_atomic(paths.morphometry_json, measures.sidecar())
        written += [paths.morphometry, paths.morphometry_json]
    else:
        paths.morphometry.unlink(missing_ok=True)
        paths.morphometry_json.unlink(missing_ok=True)

    ref = image if image is not None else final
    zooms = ref.header.get_zooms()[:3] if ref is not None else None
    image_flags = F.image_flags(
        written_geom, zooms, landmarks, th, rows=rows, missing_reason=missing_reason
    )
    present = geom.present if geom is not None else []
    ignored = sorted(set(written_geom.present) - set(present)) if written_geom is not None else []
    qc = {
        "subject": ents["sub"],
        "session": ents.get("ses"),
        "stem": stem,
        "suffix": suffix,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "app_version": __version__,
        "geometry": _geometry_summary(ref) if ref is not None else None,
        "labels_present": [int(x) for x in present],
        "labels_ignored": [int(x) for x in ignored],
        "levels": F.level_range(level_ids),
        "n_labels": len(present),
        "landmarks": list(landmarks),
        "flags": image_flags,
        "alignment": angles,
        "thresholds": th.as_dict(),
        "figures": figures,
        "previews_note": preview_note,
        "morphometry": paths.rel(paths.morphometry) if rows else None,
    }
    write_json_atomic(paths.qc, qc)
    written.append(paths.qc)
    return {
        "outputs": [paths.rel(p) for p in written],
        "figures": figures,
        "flags": image_flags,
        "n_labels": len(present),
        "levels": qc["levels"],
        "qc": paths.rel(paths.qc),
        "morphometry": qc["morphometry"],
    }
