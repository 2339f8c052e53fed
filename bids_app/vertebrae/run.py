"""One image's vertebral-body analysis: parts image and per-level rows from its final labels."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from bids_app.qc.geometry import LabelGeometry, image_data
from bids_app.vertebrae.heights import BodyMeasures, measure_bodies
from bids_app.vertebrae.parts import split


@dataclass
class VertebraResult:
    """`parts`: SPINEPS subregion ids on the final labels' grid (same shape and affine);
    `measures`: per-level rows, the sections they were read on and the slip corners."""

    parts: nib.Nifti1Image
    measures: BodyMeasures
    geometry: LabelGeometry


def analyse(final: nib.Nifti1Image, image: nib.Nifti1Image | None = None) -> VertebraResult:
    """Subregions, heights, grades and slips of one final label image (any grid); with the
    source image (any grid, same world space), heights are read on its endplates."""
    geom = LabelGeometry.from_image(final)
    parts, frames = split(geom)
    img = nib.Nifti1Image(parts.astype(np.uint8), geom.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(geom.affine, code=1)
    img.set_sform(geom.affine, code=1)
    source = (image_data(image, np.float32), image.affine) if image is not None else None
    return VertebraResult(img, measure_bodies(geom, parts, frames, source), geom)
