"""Grids and resampling, reproducing the reference preprocessing bit for bit.

See docs/method.md §1.6 (the 1 mm grid) and §2.3 (moving outputs between grids).

The reference resamples with torchio, which hands the work to SimpleITK in LPS space; we
call SimpleITK directly with the same output grid, so the model sees the same voxels. Every
function takes and returns nibabel images, whose affine states the grid (RAS mm).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


def _affine_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing, LPS direction and LPS origin of a RAS `affine`, as SimpleITK wants them."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return zooms, _LPS @ affine[:3, :3] / zooms, _LPS @ affine[:3, 3]


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of `data` on the grid of a RAS `affine`."""
    return _sitk_from_geometry(data, _affine_geometry(affine))


def _grid_affine(spacing: np.ndarray, direction: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """RAS affine of a SimpleITK-style grid (LPS direction/origin)."""
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction * spacing
    aff[:3, 3] = _LPS @ origin
    return aff


def _torchio_geometry(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing, LPS direction and LPS origin exactly as the reference's torchio sees them.

    The reference saves the canonical image (sform stored as float32), reloads it with
    nibabel and builds `tio.ScalarImage(tensor, affine)`, whose spacing is the column norm of
    that float32-rounded affine. The rounding decides the size of the 1 mm grid on oblique
    images (floor(n * 0.99999999) = n - 1), so it is reproduced here.
    """
    affine = img.affine.astype(np.float32).astype(np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return spacing, _LPS @ (affine[:3, :3] / spacing), _LPS @ affine[:3, 3]


def _sitk_from_geometry(
    data: np.ndarray, geometry: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> sitk.Image:
    spacing, direction, origin = geometry
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing(spacing.tolist())
    out.SetDirection(direction.flatten().tolist())
    out.SetOrigin(origin.tolist())
    return out


def iso_grid(img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the 1 mm grid torchio >= 0.20.11 `Resample(1)` builds.

    Size floor(n * spacing) per axis (at least 1), same direction, centred on the centre of
    the input grid, all computed from the affine as the reference's torchio does.
    """
    shape = np.array(img.shape[:3])
    spacing, direction, origin = _torchio_geometry(img)
    ref = _sitk_from_geometry(np.zeros((1, 1, 1), np.uint8), (spacing, direction, origin))
    last = np.array(ref.TransformIndexToPhysicalPoint([int(v) for v in shape - 1]), float)
    centre = (last + origin) / 2
    new = np.floor(shape * spacing)
    new[shape == 1] = 1
    new_origin = centre - direction @ ((new - 1) / 2)
    affine = _grid_affine(np.ones(3), direction, new_origin)
    return (int(new[0]), int(new[1]), int(new[2])), affine


def _reference(shape: tuple[int, ...], affine: np.ndarray, pixel_id: int) -> sitk.Image:
    """An empty SimpleITK image defining the grid (`shape`, RAS `affine`) to resample onto."""
    spacing, direction, origin = _affine_geometry(affine)
    ref = sitk.Image([int(s) for s in shape], pixel_id)
    ref.SetSpacing(spacing.tolist())
    ref.SetDirection(direction.flatten().tolist())
    ref.SetOrigin(origin.tolist())
    return ref


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    target_affine: np.ndarray,
    *,
    nearest: bool,
) -> np.ndarray:
    """Resample `data` (on `affine`) onto the grid (`shape`, `target_affine`), zero outside.

    Returns the input dtype for nearest neighbour and for float32 under linear
    interpolation, float64 for other linear input; the array is on the target grid in
    nibabel axis order. ITK interpolates in double whatever the pixel type and rounds once to
    it, so float32 in is bit for bit float64 in cast to float32, at half the memory traffic.
    """
    if not nearest and data.dtype != np.float32:
        data = data.astype(np.float64)
    src = _to_sitk(data, affine)
    ref = _reference(shape, target_affine, src.GetPixelID())
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


# Voxel types ITK resamples in their own type: it interpolates in double and casts once
# (integers truncated, floats rounded), which is torchio's float64 resampling followed by
# `astype`, without the float64 copies.
_OWN_TYPE = frozenset(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32)
) | {np.dtype(np.float32), np.dtype(np.float64)}


def resample_to_iso(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The image on its 1 mm grid, linear, cast back to the input dtype by truncation."""
    data = np.asanyarray(img.dataobj)
    shape, aff = iso_grid(img)
    own = data.dtype.isnative and data.dtype in _OWN_TYPE
    src = _sitk_from_geometry(data if own else data.astype(np.float64), _torchio_geometry(img))
    out = sitk.Resample(
        src,
        _reference(shape, aff, src.GetPixelID()),
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        src.GetPixelID(),
    )
    iso = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return image_like(iso.astype(data.dtype, copy=False), aff, img)


def exported_affine(canonical: nib.Nifti1Image) -> np.ndarray:
    """The 1 mm grid's affine (of `canonical`, the RAS input) as the reference's step-1
    files carry it.

    The reference saves the 1 mm image with nibabel; nnU-Net reads it with SimpleITK and
    writes its prediction with SimpleITK, and every step-1 output keeps that file's affine.
    On oblique grids its rotation differs from the saved float32 affine in the last bits
    (up to 6e-8), and those bits decide the nearest-neighbour ties of the way back to the
    input grid: torchio's 1 mm grid of a 1 mm oblique image lies half a voxel off it (issue
    29, docs/method.md §1.4 step 23). The same round trip on a 2x2x2 image gives that affine
    bit for bit.
    """
    with tempfile.TemporaryDirectory(prefix="spineseg-grid-") as tmp:
        saved, written = Path(tmp) / "saved.nii.gz", Path(tmp) / "written.nii.gz"
        # As the reference's resample step saves it: torchio's float64 affine, the input's
        # header, the qform set from that affine.
        _, affine = iso_grid(canonical)
        probe = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), affine, canonical.header.copy())
        probe.set_qform(probe.affine)
        nib.save(probe, saved)
        read = sitk.ReadImage(str(saved))
        out = sitk.Image(read.GetSize(), sitk.sitkUInt8)
        out.CopyInformation(read)
        sitk.WriteImage(out, str(written))
        return np.asarray(nib.Nifti1Image.from_filename(written).affine, float)


def labels_onto(seg: np.ndarray, seg_affine: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Label map moved onto `ref`'s grid by nearest neighbour (uint8, `ref` grid)."""
    out = resample(seg.astype(np.uint8), seg_affine, ref.shape[:3], ref.affine, nearest=True)
    return out.astype(np.uint8)


def soft_onto(prob: np.ndarray, prob_affine: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Soft map moved onto `ref`'s grid by linear interpolation (float32, `ref` grid)."""
    out = resample(
        prob.astype(np.float32, copy=False), prob_affine, ref.shape[:3], ref.affine, nearest=False
    )
    return out.astype(np.float32, copy=False)


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
    for lab, box in enumerate(ndimage.find_objects(moved), start=1):
        if box is not None:
            com = np.round(_centre_of_mass(moved[box] == lab, box)).astype(int)
            out[tuple(np.clip(com, pad, ref_shape - pad - 1))] = lab
    return out[pad:-pad, pad:-pad, pad:-pad] if pad else out


def _centre_of_mass(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Centre of mass (voxel index of the whole grid) of `mask`, the crop `box` of that grid.

    Bit for bit `ndimage.center_of_mass` of the uncropped mask: the index sums are whole
    numbers, so they are exact, and each mean is the one correctly rounded quotient; only the
    work shrinks from the whole volume per label to the label's box.
    """
    where = np.nonzero(mask)
    count = len(where[0])
    return np.array(
        [(int(w.sum()) + count * s.start) / count for w, s in zip(where, box, strict=True)]
    )


def image_like(data: np.ndarray, affine: np.ndarray, template: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI of `data` on `affine`'s grid with the template's header, qform = sform = affine
    (as the reference writes every output)."""
    out = nib.Nifti1Image(data, affine, template.header.copy())
    out.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out
