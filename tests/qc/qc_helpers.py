"""Ground-truth helpers for the QC tests.

The ground truth of a length is computed from the phantom's continuous anatomy, not from its
voxels: the spine frame of `bids_app.phantom` maps a world point to its arc length s along the
canal, so the true extent of a body or disc along any line is the stretch of that line whose s
lies within the segment's [s_top, s_bot).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from bids_app.bids.stamps import write_stamp
from bids_app.phantom.anatomy import Anatomy, Segment
from bids_app.phantom.render import Phantom
from bids_app.qc import write_image_qc


def reorient(img: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same voxels stored in another axis order (world positions unchanged)."""
    data = np.asanyarray(img.dataobj)
    xform = ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(axcodes)))
    out = nib.Nifti1Image(
        apply_orientation(data, xform), img.affine @ inv_ornt_aff(xform, data.shape)
    )
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    return out


def spine_s(anat: Anatomy, pts: np.ndarray) -> np.ndarray:
    """Arc length s of world points (n, 3) in the phantom's spine frame."""
    s, x, y, z = anat.s_table, anat.x_table, anat.y_table, anat.z_table
    tang = np.stack([np.gradient(v, s) for v in (x, y, z)], 1)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    zq = -pts[:, 2]

    def at(v: np.ndarray) -> np.ndarray:
        return np.interp(zq, -z, v)

    return at(s) + (pts[:, 0] - at(x)) * at(tang[:, 0]) + (pts[:, 1] - at(y)) * at(tang[:, 1])


def true_length(anat: Anatomy, seg: Segment, point: np.ndarray, direction: np.ndarray) -> float:
    """True extent (mm) of a body or disc along the line point + t * direction."""
    t = np.arange(-60.0, 60.0, 0.01)
    s = spine_s(anat, point + t[:, None] * direction)
    return float(((s >= seg.s_top) & (s < seg.s_bot)).sum() * 0.01)


def canal_radii(anat: Anatomy, s: float) -> tuple[float, float, float, float]:
    """(canal AP, canal LR, cord AP, cord LR) radii in mm at arc length s (cord tapered,
    AP radii narrowed where the anatomy has a narrowing)."""
    k = anat.radius_knots_s
    taper = float(np.clip((anat.cord_end_s - s) / (20 * anat.scale), 0, 1))
    ap = float(anat.ap_factor(s))
    return (
        float(np.interp(s, k, anat.canal_radii[:, 0])) * ap,
        float(np.interp(s, k, anat.canal_radii[:, 1])),
        float(np.interp(s, k, anat.cord_radii[:, 0])) * np.sqrt(taper) * ap,
        float(np.interp(s, k, anat.cord_radii[:, 1])) * np.sqrt(taper),
    )


def stamp_for(
    subject: str, session: str | None, source: str, status: str, outputs: list[str], **extra
) -> dict:
    """A status stamp as the BIDS-App layer writes it (bids_app.bids.stamps)."""
    return {
        "status": status,
        "reason": extra.pop("reason", None),
        "source": source,
        "subject": subject,
        "session": session,
        "app_version": "0.1.0",
        "options_hash": "0123456789abcdef",
        "options": {"step1_only": False, "iso": False, "localizer": None},
        "model": {"release": "r20260730", "sha256": {"Dataset101.zip": "ab" * 32}},
        "device": "cpu",
        "timings": {"step1": 12.5, "step2": 20.0, "total": 41.2},
        "landmarks": {"step1": ["C2-C3"], "step2": ["C2-C3"]},
        "warnings": [],
        "outputs": outputs,
        "finished": "2026-11-22T10:00:00+00:00",
        **extra,
    }


def true_endplate_normal(anat: Anatomy, vertebra: int, upper: bool) -> np.ndarray:
    """Unit normal (superior) of a vertebra's true endplate at the centre of its body.

    The endplate is the level set s = s_top (or s_bot) of the spine frame; its normal is the
    gradient of s, taken by central differences at the body centre.
    """
    seg = anat.segment(vertebra)
    sb = seg.s_top if upper else seg.s_bot
    point = anat.centre_at_s(sb) + np.array([0.0, anat.body_offset(seg.depth, sb), 0.0])
    h = 0.5
    grad = np.array(
        [
            (spine_s(anat, (point + h * e)[None])[0] - spine_s(anat, (point - h * e)[None])[0])
            / (2 * h)
            for e in np.eye(3)
        ]
    )
    return -grad / np.linalg.norm(grad)


def bids_source(stem: str, suffix: str = "T2w") -> str:
    """The BIDS path of a source image named `<stem>_<suffix>.nii.gz`, in its anat folder."""
    parts = dict(p.split("-", 1) for p in stem.split("_") if "-" in p)
    folder = f"sub-{parts['sub']}" + (f"/ses-{parts['ses']}" if "ses" in parts else "")
    return f"{folder}/anat/{stem}_{suffix}.nii.gz"


def add_image(root: Path, bids: Path, phantom: Phantom, sub: str, ses: str | None) -> str:
    """A phantom as one derivatives image: source, final labels, QC files and an ok stamp;
    returns its key (`<stem>_T2w`)."""
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_acq-sag"
    folder = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "anat"
    source = f"{folder}/{stem}_T2w.nii.gz"
    (bids / folder).mkdir(parents=True, exist_ok=True)
    nib.save(phantom.image, bids / source)
    final = f"{folder}/{stem}_seg-spine_desc-T2w_dseg.nii.gz"
    (root / folder).mkdir(parents=True, exist_ok=True)
    nib.save(phantom.labels, root / final)
    summary = write_image_qc(
        phantom.image,
        phantom.labels,
        None,
        output_dir=root,
        source=bids_source(stem),
        suffix="T2w",
        landmarks=["C2-C3"],
    )
    write_stamp(
        root / "logs/status" / f"{stem}_T2w.json",
        stamp_for(sub, ses, source, "ok", [final, *summary["outputs"]]),
    )
    return f"{stem}_T2w"
