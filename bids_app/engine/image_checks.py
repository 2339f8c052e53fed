"""Checks of one input image, run before anything is allocated for it: refuse, or warn and go on.

A refusal is an `EngineError` with one line naming the file; a warning is a sentence the
engine adds to `EngineResult.warnings` (and so to the status stamp, the sidecar and the QC
report). The header is checked first, so that a bad header is reported before any voxel data
is read; the voxels are then read once and handed on in memory.

Decisions:

- Colour (RGB/RGBA data types, vector intents, a 5th colour dimension), complex-valued,
  2-D or single-slice, and 5-D images are refused. A 4-D series is segmented as the mean of
  its volumes, as TotalSpineSeg does (method.md §1.4 step 5), with a warning.
- The grid is the affine nibabel picks: the sform if sform_code > 0, else the qform if
  qform_code > 0, else a fallback built from the voxel sizes alone (no orientation). When it
  loads a file nibabel silently replaces zero voxel sizes (pixdim) by 1 and negative ones by
  their absolute value, so the header is re-read as stored. A zero voxel size in the transform
  that defines the grid, or a singular affine, is refused. A zero or negative pixdim that
  the sform overrides, a negative pixdim in the qform, a qform that disagrees with the sform,
  and a header with neither transform are warnings naming the affine used and why.
- A header that declares more voxel data than the file holds is refused before allocating
  (for .nii the file size, for .nii.gz the data counted while decompressing in small pieces;
  other compressions are not counted). So is a 1 mm model grid beyond a whole body.
- NaN and infinite voxels are set to 0 with a warning giving their number and share. More
  than half non-finite voxels, or a constant image, leaves nothing to segment: refused.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener
from nibabel.spatialimages import SpatialImage

from bids_app.engine.result import EngineError

NEED = "SpineSeg needs a greyscale 3D image"
MAX_FOV_MM = 2000.0  # longer than any body axis: more means wrong voxel sizes
MAX_ISO_VOXELS = 2000 * 700 * 450  # a whole adult body on the 1 mm model grid
MAX_NONFINITE = 0.5  # share of NaN/inf voxels above which the image is refused
DISAGREE_MM = 0.1  # qform/sform distance worth a warning (float32 storage errs ~1e-4 mm)
_COLOUR_INTENTS = {"vector", "rgb vector", "rgba vector"}
_CHUNK = 1 << 20  # decompression piece when counting the bytes of a .nii.gz


@dataclass
class CheckedImage:
    """The image to segment (voxels in memory, non-finite ones set to 0) and its warnings."""

    image: SpatialImage  # same class as the input (NIfTI-1 or NIfTI-2)
    warnings: list[str] = field(default_factory=list)


def check_header(img: SpatialImage, name: str) -> list[str]:
    """The checks that need no voxel: kind, grid, declared size against the file.

    Callers that estimate memory from the header run these first, so that a 2-D image or a
    header declaring terabytes over a small file is named for what it is, not for the memory
    it would need. Returns the warnings; refusals are EngineError, one line naming `name`.
    """
    warnings = _kind(img, name) + _grid(img, name)
    _size(img, name)
    return warnings


def check_image(img: SpatialImage, name: str) -> CheckedImage:
    """Refuse what the method cannot segment (EngineError, one line naming `name`); otherwise
    return the image with its voxels read once, and warnings about what was assumed."""
    warnings = check_header(img, name)
    data, voxel_warnings = _voxels(np.asanyarray(img.dataobj), name)
    return CheckedImage(img.__class__(data, img.affine, img.header), warnings + voxel_warnings)


def _kind(img: SpatialImage, name: str) -> list[str]:
    """Data type and dimensions, from the header alone."""
    dtype, shape = img.get_data_dtype(), img.shape
    intent = img.header.get_intent()[0] if isinstance(img.header, nib.Nifti1Header) else ""
    colour_dim = len(shape) == 5 and shape[3] == 1 and shape[4] in (3, 4)
    if dtype.fields is not None or intent in _COLOUR_INTENTS or colour_dim:
        raise EngineError(f"{name}: RGB/colour image: {NEED}")
    if dtype.kind == "c":
        raise EngineError(f"{name}: complex-valued image ({dtype}): {NEED} (magnitude)")
    if len(shape) < 3 or len(shape) > 4:
        raise EngineError(f"{name}: {len(shape)}-D image (shape {shape}): {NEED}")
    if min(shape[:3]) < 2:
        raise EngineError(f"{name}: single-slice image (shape {shape}): {NEED}")
    if len(shape) == 4 and shape[3] > 1:
        return [
            f"4-D image with {shape[3]} volumes: their mean was segmented (as TotalSpineSeg "
            "does); segment one volume if they differ in contrast"
        ]
    return []


def _grid(img: SpatialImage, name: str) -> list[str]:
    """The affine in use must be a grid; say which one it is when the header is ambiguous."""
    hdr = img.header if isinstance(img.header, nib.Nifti1Header) else None
    s_code = int(hdr["sform_code"]) if hdr is not None else 0
    q_code = int(hdr["qform_code"]) if hdr is not None else 0
    if hdr is None:
        used, why = "affine", ""
    elif s_code > 0:
        used, why = "sform", f"sform_code {s_code} > 0"
    elif q_code > 0:
        used, why = "qform", f"sform_code 0, qform_code {q_code} > 0"
    else:
        used, why = "pixdim-only fallback affine", "sform_code and qform_code are 0"
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    flat = abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * np.prod(zooms)  # axes (nearly) parallel
    if not np.all(np.isfinite(affine)) or flat:
        raise EngineError(f"{name}: the {used} is singular (voxel sizes {_mm(zooms)})")
    if hdr is None:
        return []
    warnings = []
    pixdim = _stored_header(img)["pixdim"][1:4]
    if not np.all(pixdim > 0):
        if np.any(pixdim == 0) and used != "sform":
            raise EngineError(
                f"{name}: voxel size 0 in the header (pixdim[1:4] = {_mm(pixdim)}) and the "
                f"{used} defines the grid ({why}): the affine is singular"
            )
        fix = "ignored" if used == "sform" else "their absolute values were used"
        warnings.append(
            f"header voxel sizes pixdim[1:4] = {_mm(pixdim)} are not all positive: {fix}; "
            f"the grid comes from the {used} ({why}), voxel sizes {_mm(zooms)}"
        )
    if used.startswith("pixdim"):
        warnings.append(
            f"the header has no sform or qform ({why}): nibabel's {used} was used, so the "
            "orientation (left-right included) is unknown"
        )
    qform_valid = np.all(pixdim != 0) and np.all(hdr["pixdim"][1:4] > 0)  # else warned above
    if s_code > 0 and q_code > 0 and qform_valid:
        gap = _distance(hdr.get_qform(), hdr.get_sform(), img.shape[:3])
        if gap > DISAGREE_MM:
            warnings.append(
                f"qform and sform disagree by up to {gap:.1f} mm over the image: the sform was "
                f"used ({why}, nibabel's rule); tools that prefer the qform place it elsewhere"
            )
    return warnings


def _stored_header(img: SpatialImage) -> Any:
    """The header as stored in the file (nibabel fixes pixdim while loading), else the image's."""
    holder = img.file_map.get("header") or img.file_map["image"]
    if holder.filename is None and holder.fileobj is None:
        return img.header
    with holder.get_prepare_fileobj("rb") as f:
        return type(img.header).from_fileobj(f, check=False)  # type: ignore[call-arg,arg-type]


def _distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corners of the grid."""
    corners = np.array([[*c, 1] for c in product(*[(0, n - 1) for n in shape])], float).T
    return float(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0).max())


def _size(img: SpatialImage, name: str) -> None:
    """Declared data against the file, and the 1 mm grid against a body, before allocating."""
    proxy = img.dataobj
    if isinstance(proxy, nib.arrayproxy.ArrayProxy) and isinstance(proxy.file_like, str):
        declared = int(np.prod(proxy.shape)) * proxy.dtype.itemsize
        try:
            held = _file_bytes(proxy.file_like, proxy.offset + declared)
        except zlib.error as err:
            raise EngineError(f"{name}: corrupt compressed data ({err})") from err
        held = None if held is None else max(held - proxy.offset, 0)
        if held is not None and held < declared:
            raise EngineError(
                f"{name}: header declares {'x'.join(map(str, proxy.shape))} voxels "
                f"({_amount(declared)}) but the file holds only {held} bytes: truncated or "
                "inconsistent file"
            )
    fov = np.array(img.shape[:3]) * np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    grid = np.floor(fov).astype(int)
    if fov.max() > MAX_FOV_MM or np.prod(grid.astype(float)) > MAX_ISO_VOXELS:
        raise EngineError(
            f"{name}: field of view {_mm(fov)} mm would make a 1 mm model grid of "
            f"{'x'.join(map(str, grid))} voxels (bounds: {MAX_FOV_MM:g} mm per axis, "
            f"{MAX_ISO_VOXELS / 1e6:.0f} M voxels): check the voxel sizes in the header"
        )


def _file_bytes(path: str, needed: int) -> int | None:
    """Bytes of (uncompressed) data in the file, counted up to `needed`; None when unknown.

    A .nii.gz is decompressed in pieces of at most 1 MiB that are dropped once counted, so
    a header declaring terabytes costs no memory; a truncated stream just ends the count.
    """
    suffix = Path(path).suffix
    if suffix != ".gz":
        return None if suffix in ImageOpener.compress_ext_map else os.path.getsize(path)
    info = os.stat(path)
    return _gz_bytes(path, info.st_size, info.st_mtime_ns, needed)


@lru_cache(maxsize=16)
def _gz_bytes(path: str, _size: int, _mtime_ns: int, needed: int) -> int:
    """`_file_bytes` of a .nii.gz, remembered for the file as it is (size and mtime): a run
    checks each header twice (before its memory estimate, then in the engine), and counting
    means decompressing the whole file."""
    count, inflate = 0, zlib.decompressobj(zlib.MAX_WBITS | 16)
    with open(path, "rb") as f:
        pending = b""
        while count < needed:
            pending = pending or f.read(_CHUNK)
            if not pending:
                break
            if inflate.eof:  # a multi-member gzip: the next member starts here
                inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
            count += len(inflate.decompress(pending, _CHUNK))
            pending = inflate.unconsumed_tail or inflate.unused_data
    return count


def _voxels(data: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """Non-finite voxels set to 0 (warned), unless most are; a constant image is refused."""
    warnings = []
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        bad = data.size - int(np.count_nonzero(finite))
        share = f"{bad} of {data.size} voxels ({100 * bad / data.size:.3g} %)"
        if bad > MAX_NONFINITE * data.size:
            raise EngineError(f"{name}: {share} are NaN or infinite: nothing to segment")
        if bad:
            data = np.where(finite, data, 0)
            warnings.append(f"{share} were NaN or infinite and were set to 0")
    low, high = data.min(), data.max()
    if low == high:
        raise EngineError(f"{name}: image is empty (every voxel is {low:g})")
    return data, warnings


def _amount(size: int) -> str:
    """Bytes in a unit a reader takes in at once (1920 bytes, 2.3 MB, 2000.00 GB)."""
    if size < 10**6:
        return f"{size} bytes"
    return f"{size / 1e6:.1f} MB" if size < 10**9 else f"{size / 1e9:.2f} GB"


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:g}" for v in np.asarray(values, float).round(3))
