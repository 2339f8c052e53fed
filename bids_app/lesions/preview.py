"""Lesion preview: the spine's sagittal preview with the lesions drawn over it, in one colour
named in a legend, and the lesion section of the subject report.

The view is `bids_app.qc.previews.sagittal` (same plane, orientation and level tags), its
labels being the spine labels with the lesion voxels set to `LESION_VALUE`, an id outside
the spine's label table whose preview colour is a saturated red.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import ImageDraw

from bids_app.plumbing import labels as L
from bids_app.qc import previews
from bids_app.qc.geometry import LabelGeometry
from bids_app.qc.image import image_data
from bids_app.qc.records import read_tsv

LESION_VALUE = 233  # not a spine label; previews colour it (217, 56, 54)
LESION_COLOUR = L.label_colour(LESION_VALUE)
REPORT_COLUMNS = (
    ("lesion_id", "#"),
    ("volume_mm3", "volume (mm³)"),
    ("length_mm", "length (mm)"),
    ("width_mm", "width (mm)"),
    ("max_axial_damage_ratio", "max damage ratio"),
    ("total_bridge_mm", "tissue bridges (mm)"),
    ("levels", "levels"),
    ("level_shares", "share per level"),
)


def figure_path(output_dir: Path, subject: str, prefix: str, suffix: str) -> Path:
    return (
        Path(output_dir)
        / f"sub-{subject}"
        / "figures"
        / (f"{prefix}_seg-lesion_desc-{suffix}_sagittal.png")
    )


def write_preview(
    path: Path, image: nib.Nifti1Image, spine: nib.Nifti1Image | None, mask: nib.Nifti1Image
) -> None:
    """The sagittal preview with the lesions (mask > 0, on the spine's grid) in red."""
    lesion = np.asanyarray(mask.dataobj) > 0
    if spine is not None:
        labels = np.asanyarray(spine.dataobj).astype(np.uint8)
        affine = spine.affine
    else:
        labels, affine = np.zeros(lesion.shape, np.uint8), mask.affine
    labels = np.where(lesion, LESION_VALUE, labels).astype(np.uint8)
    geom = LabelGeometry.from_image(nib.Nifti1Image(labels, affine))
    picture = previews.sagittal(
        image_data(image, np.float32), image.affine, geom, untagged=frozenset({LESION_VALUE})
    )
    draw = ImageDraw.Draw(picture.image)
    x = picture.image.width // 2 - 30
    draw.rectangle((x, 4, x + 10, 14), fill=LESION_COLOUR)
    legend = "lesion" if lesion.any() else "lesion: none found"
    draw.text((x + 14, 2), legend, fill=previews.TEXT)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def report_section(root: Path, stamp: dict) -> dict | None:
    """The subject report's lesion section of one image (None without lesion outputs)."""
    outputs = stamp.get("outputs") or []
    table = next((r for r in outputs if "_seg-lesion_desc-" in r and r.endswith(".tsv")), None)
    if table is None:
        return None
    fig_rel = next((r for r in outputs if "_seg-lesion_desc-" in r and r.endswith(".png")), None)
    rows = read_tsv(Path(root) / table)
    return {
        "figure": previews.figure(
            root,
            fig_rel,
            "Lesions (red, see the legend) over the sagittal view of the spine labels",
        ),
        "headers": [h for _, h in REPORT_COLUMNS],
        "rows": [[_cell(row.get(k)) for k, _ in REPORT_COLUMNS] for row in rows],
        "file": table,
        "colour": "#{:02x}{:02x}{:02x}".format(*LESION_COLOUR),
    }


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.2f}"
    return str(value)
