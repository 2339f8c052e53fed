"""Grids and resampling, reproducing the reference preprocessing bit for bit (method.md §1.6, §2.3).

The reference resamples with torchio, which hands the work to SimpleITK in LPS space; we
call SimpleITK directly with the same output grid, so the model sees the same voxels. Every
function takes and returns nibabel images, whose affine states the grid (RAS mm).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_LPS = np.diag([-1.0, -1.0, 1.0])


def average_4d(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Mean over the 4th axis, cast back to the stored dtype (reference `average4d`)."""
    if img.ndim != 4:
        return img
    dtype = np.asanyarray(img.dataobj).dtype
    data = np.asanyarray(img.dataobj).mean(axis=-1).astype(dtype)
    return image_like(data, img.affine, img)


def to_canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Closest RAS+ orientation by axis permutation/flip only (no interpolation)."""
    return nib.as_closest_canonical(img)


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing(zooms.tolist())
    out.SetDirection((_LPS @ affine[:3, :3] / zooms).flatten().tolist())
    out.SetOrigin((_LPS @ affine[:3, 3]).tolist())
    return out


def _grid_affine(spacing: np.ndarray, direction: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """RAS affine of a SimpleITK-style grid (LPS direction/origin)."""
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction * spacing
    aff[:3, 3] = _LPS @ origin
    return aff


def iso_grid(img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the 1 mm grid torchio >= 0.20.11 `Resample(1)` builds.

    Size floor(n * spacing) per axis (at least 1), same direction, centred on the centre of
    the input grid.
    """
    shape = np.array(img.shape[:3])
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    new = np.maximum(np.floor(shape * zooms), 1).astype(int)
    direction = _LPS @ img.affine[:3, :3] / zooms
    first = _LPS @ img.affine[:3, 3]
    last = _LPS @ (img.affine[:3, :3] @ (shape - 1) + img.affine[:3, 3])
    centre = (first + last) / 2
    origin = centre - direction @ ((new - 1) / 2.0)
    return (int(new[0]), int(new[1]), int(new[2])), _grid_affine(np.ones(3), direction, origin)


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    target_affine: np.ndarray,
    *,
    nearest: bool,
) -> np.ndarray:
    """Resample `data` (on `affine`) onto the grid (`shape`, `target_affine`), zero outside.

    Returns float64 for linear interpolation and the input dtype for nearest neighbour;
    the array is on the target grid in nibabel axis order.
    """
    src = _to_sitk(data.astype(np.float64) if not nearest else data, affine)
    zooms = np.sqrt((target_affine[:3, :3] ** 2).sum(0))
    ref = sitk.Image([int(s) for s in shape], src.GetPixelID())
    ref.SetSpacing(zooms.tolist())
    ref.SetDirection((_LPS @ target_affine[:3, :3] / zooms).flatten().tolist())
    ref.SetOrigin((_LPS @ target_affine[:3, 3]).tolist())
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def resample_to_iso(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The image on its 1 mm grid, linear, cast back to the input dtype by truncation."""
    dtype = np.asanyarray(img.dataobj).dtype
    shape, aff = iso_grid(img)
    data = resample(np.asanyarray(img.dataobj), img.affine, shape, aff, nearest=False)
    return image_like(data.astype(dtype), aff, img)


def labels_onto(seg: np.ndarray, seg_affine: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Label map moved onto `ref`'s grid by nearest neighbour (uint8, `ref` grid)."""
    out = resample(seg.astype(np.uint8), seg_affine, ref.shape[:3], ref.affine, nearest=True)
    return out.astype(np.uint8)


def soft_onto(prob: np.ndarray, prob_affine: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Soft map moved onto `ref`'s grid by linear interpolation (float32, `ref` grid)."""
    out = resample(prob.astype(np.float32), prob_affine, ref.shape[:3], ref.affine, nearest=False)
    return out.astype(np.float32)


def points_onto(points: np.ndarray, points_affine: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Single-voxel labels moved onto `ref`'s grid, one voxel each (reference `label` mode).

    Each point is dilated so nearest-neighbour sampling cannot miss it on a coarser grid,
    then replaced by the rounded centre of mass of what lands on `ref` (uint8, `ref` grid).
    """
    src_z = np.sqrt((points_affine[:3, :3] ** 2).sum(0))
    ref_z = np.sqrt((ref.affine[:3, :3] ** 2).sum(0))
    d = int(np.ceil(np.max(ref_z / src_z)))
    pad = d * int(np.ceil(np.max(src_z / ref_z)))
    padded = np.pad(points.astype(np.uint8), pad)
    p_aff = points_affine.copy()
    p_aff[:3, 3] -= points_affine[:3, :3] @ np.full(3, pad)
    padded = ndimage.grey_dilation(padded, size=(2 * d + 1,) * 3)
    ref_shape = np.array(ref.shape[:3]) + 2 * pad
    r_aff = ref.affine.copy()
    r_aff[:3, 3] -= ref.affine[:3, :3] @ np.full(3, pad)
    moved = resample(padded, p_aff, tuple(int(v) for v in ref_shape), r_aff, nearest=True)
    out = np.zeros(ref_shape, np.uint8)
    for lab in np.unique(moved):
        if lab == 0:
            continue
        com = np.round(ndimage.center_of_mass(moved == lab)).astype(int)
        com = np.clip(com, pad, ref_shape - pad - 1)
        out[tuple(com)] = lab
    return out[pad:-pad, pad:-pad, pad:-pad] if pad else out


def image_like(data: np.ndarray, affine: np.ndarray, template: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI of `data` on `affine`'s grid with the template's header, qform = sform = affine
    (as the reference writes every output)."""
    out = nib.Nifti1Image(data, affine, template.header.copy())
    out.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out
