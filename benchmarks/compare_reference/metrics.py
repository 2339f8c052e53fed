"""Voxel-by-voxel comparison of two runs' outputs, and Dice against a phantom's exact labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from .cases import Case
from .config import REF_OUTPUTS
from .measure import RunRecord


def _load(path: str) -> nib.Nifti1Image:
    return nib.load(path)


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> str | None:
    if a.shape[:3] != b.shape[:3]:
        return f"shape {a.shape} vs {b.shape}"
    if not np.allclose(a.affine, b.affine, atol=1e-4):
        return "affines differ"
    return None


def compare_labels(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    """Voxel agreement, Dice per label and a summary of the voxels that differ."""
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj).round().astype(np.int32)
    b = np.asanyarray(ours.dataobj).round().astype(np.int32)
    diff = a != b
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    dice = {}
    for lab in labels:
        ma, mb = a == lab, b == lab
        denom = int(ma.sum()) + int(mb.sum())
        dice[str(lab)] = round(2 * int((ma & mb).sum()) / denom, 4) if denom else 1.0
    pairs: dict[tuple[int, int], int] = {}
    if diff.any():
        for x, y in zip(a[diff].tolist(), b[diff].tolist(), strict=True):
            pairs[(x, y)] = pairs.get((x, y), 0) + 1
    confusion = sorted(pairs.items(), key=lambda kv: -kv[1])[:10]
    idx = np.argwhere(diff)
    fg = (a > 0) | (b > 0)
    return {
        "agreement_pct": round(100 * (1 - diff.mean()), 4),
        "foreground_agreement_pct": round(100 * (1 - diff[fg].mean()), 4) if fg.any() else 100.0,
        "n_diff": int(diff.sum()),
        "dice": dice,
        "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else 1.0,
        "only_in_ref": sorted(set(np.unique(a).tolist()) - set(np.unique(b).tolist())),
        "only_in_ours": sorted(set(np.unique(b).tolist()) - set(np.unique(a).tolist())),
        "top_diffs": [{"ref": x, "ours": y, "voxels": n} for (x, y), n in confusion],
        "diff_bbox": [idx.min(0).tolist(), idx.max(0).tolist()] if len(idx) else None,
    }


def compare_levels(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    """Level markers are single voxels: compare positions per level value."""
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj).round().astype(np.int32)
    b = np.asanyarray(ours.dataobj).round().astype(np.int32)
    zooms = np.asarray(ref.header.get_zooms()[:3], float)
    per_level = {}
    for lev in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        pa, pb = np.argwhere(a == lev), np.argwhere(b == lev)
        entry: dict = {"ref": pa.tolist(), "ours": pb.tolist()}
        if len(pa) and len(pb):
            entry["distance_mm"] = round(float(np.linalg.norm((pa[0] - pb[0]) * zooms)), 3)
        per_level[str(lev)] = entry
    same = [k for k, v in per_level.items() if v["ref"] == v["ours"]]
    return {
        "agreement_pct": round(100 * (1 - (a != b).mean()), 4),
        "levels_ref": sorted(set(np.unique(a).tolist()) - {0}),
        "levels_ours": sorted(set(np.unique(b).tolist()) - {0}),
        "same_position": len(same),
        "n_levels": len(per_level),
        "per_level": per_level,
    }


def compare_soft(ref: nib.Nifti1Image, ours: nib.Nifti1Image) -> dict:
    grid = _same_grid(ref, ours)
    if grid:
        return {"error": f"different grids: {grid}"}
    a = np.asanyarray(ref.dataobj, dtype=np.float64)
    b = np.asanyarray(ours.dataobj, dtype=np.float64)
    d = np.abs(a - b)
    support = (a > 0) | (b > 0)
    return {
        "max_abs_diff": round(float(d.max()), 6),
        "mean_abs_diff_in_support": round(float(d[support].mean()), 6) if support.any() else 0.0,
        "n_diff_gt_1e-3": int((d > 1e-3).sum()),
    }


def compare_runs(ref: RunRecord, other: RunRecord, name: str) -> dict:
    """Every output kind both runs produced for image `name`."""
    out = {}
    for kind in REF_OUTPUTS:
        pa, pb = ref.outputs.get(f"{name}/{kind}"), other.outputs.get(f"{name}/{kind}")
        if not (pa and pb):
            out[kind] = {"missing": [r.tool for r, p in ((ref, pa), (other, pb)) if not p]}
            continue
        fn = COMPARERS.get(kind, compare_labels)
        out[kind] = fn(_load(pa), _load(pb))
    return out


COMPARERS = {"levels": compare_levels, "cord_soft": compare_soft, "canal_soft": compare_soft}


def truth_dice(rec: RunRecord, case: Case) -> dict | None:
    """Mean Dice of the final labels against a phantom's exact labels (same grid)."""
    path = rec.outputs.get(f"{case.name}/final")
    if case.truth is None or path is None:
        return None
    res = compare_labels(nib.load(case.truth), nib.load(path))
    if "error" in res:
        return res
    truth_labels = set(np.unique(np.asanyarray(nib.load(case.truth).dataobj)).tolist()) - {0}
    per = {k: v for k, v in res["dice"].items() if int(k) in truth_labels}
    return {
        "mean_dice_over_truth_labels": round(float(np.mean(list(per.values()))), 4),
        "dice": per,
    }
