"""Ground truth of the vertebral bodies of a phantom: subregion labels on the image grid,
body heights, the deformities drawn and the slips, from the continuous anatomy.

Subregion ids are SPINEPS's (see `bids_app.vertebrae.parts`, passed in as `ids` so this
layer imports nothing above it). The truth follows the renderer's solids: the body is the
elliptic cylinder of `render._classify` (sunk endplates and slips included), the spinous
process is the arch behind the ring around the canal, the costal (transverse) processes the
arch lateral to it, the rest of the arch is the arcus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import nibabel as nib
import numpy as np

from bids_app.phantom.anatomy import BODY, DISC, SACRUM, Anatomy, Deformity
from bids_app.phantom.render import Phantom, _classify, _Tables
from bids_app.plumbing import labels as L


def _posterior_wall(anat: Anatomy, s: float) -> float:
    """AP position (mm, anterior of the canal centre) of the posterior wall of a body at s,
    as the renderer places it (the canal's un-narrowed AP radius plus half the arch)."""
    return float(np.interp(s, anat.radius_knots_s, anat.canal_radii[:, 0])) + (
        anat.arch_thickness / 2
    )


def _axes(anat: Anatomy, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T superior, N anterior, B right) of the spine frame at arc length s (world)."""
    t = anat.centre_at_s(s - 0.5) - anat.centre_at_s(s + 0.5)
    t /= np.linalg.norm(t)
    n = np.array([0.0, 1.0, 0.0]) - t[1] * t
    n /= np.linalg.norm(n)
    return t, n, np.cross(n, t)


def _point(tab: _Tables, s: float, a: float) -> np.ndarray:
    """World point whose spine-frame coordinates (as the renderer computes them, slips
    included) are (s, a, 0): a few fixed-point steps from the centreline frame."""
    anat = tab.anat
    t, n, b = _axes(anat, s)
    p = anat.centre_at_s(s) + a * n
    for _ in range(4):
        fs, fa, fl = (float(v[0]) for v in tab.frame(p[None].astype(np.float32)))
        fa -= float(anat.slip_offset(np.array([fs]))[0])
        p = p - (fs - s) * -t + (a - fa) * n - fl * b
    return p


def _run_along(tab: _Tables, p: np.ndarray, axis: np.ndarray, label: int) -> float:
    """Length (mm) of the run of `label` through world point p along axis, at 0.05 mm."""
    t = np.arange(-60.0, 60.0, 0.05)
    lab = _classify(tab, (p + t[:, None] * axis).astype(np.float32))[1]
    mid = int(np.argmin(np.abs(t)))
    if lab[mid] != label:
        return 0.0
    out = lab != label
    up = np.flatnonzero(out[:mid])
    down = np.flatnonzero(out[mid:])
    lo = up[-1] + 1 if up.size else 0
    hi = mid + down[0] if down.size else lab.size
    return float((hi - lo) * 0.05)


def body_heights(tab: _Tables, label: int, shares: Mapping[str, float]) -> dict[str, float]:
    """Heights (mm) of a rendered body along the column axis at its mid-height, through its
    mid-sagittal section at AP `shares` of its depth from the posterior wall (as measured:
    {"anterior": 0.85, ...}). Read on the renderer's own labels, so the column's curve
    (which makes a bent body taller on its convex side) and sunk endplates are in them."""
    anat = tab.anat
    seg = anat.segment(label)
    s_mid = (seg.s_top + seg.s_bot) / 2
    wall = _posterior_wall(anat, s_mid)
    axis = _axes(anat, s_mid)[0]
    out = {}
    for name, share in shares.items():
        # The middle of the run at that position, so a sunk endplate does not push the
        # start point out of the body.
        top, bot = anat.endplate_sink(label, np.array([share]), np.zeros(1))
        s_at = s_mid + (float(top[0]) - float(bot[0])) / 2
        out[name] = _run_along(tab, _point(tab, s_at, wall + share * seg.depth), axis, label)
    return out


def slip_truth(tab: _Tables, disc: int) -> dict[str, float]:
    """AP offset (mm, + anterior) of the upper body's posterior-inferior corner over the lower
    body's posterior-superior corner at a disc, along the lower body's anterior direction,
    and as a percentage of the lower body's depth."""
    anat = tab.anat
    i = next(k for k, seg in enumerate(anat.segments) if seg.label == disc)
    upper, lower = anat.segments[i - 1], anat.segments[i + 1]
    eps = 0.2
    p_up = _point(tab, upper.s_bot - eps, _posterior_wall(anat, upper.s_bot))
    p_lo = _point(tab, lower.s_top + eps, _posterior_wall(anat, lower.s_top))
    mm = float((p_up - p_lo) @ _axes(anat, lower.s_top)[1])
    return {"slip_mm": mm, "slip_percent": 100 * mm / lower.depth}


def _ratios(heights: dict[int, dict[str, float]], label: int) -> dict[str, float]:
    """The graders' ratios of one body from the truth heights of all bodies."""
    h = heights[label]
    near = [heights[v]["posterior"] for v in (label - 1, label + 1) if v in heights]
    near = [x for x in near if x > 0]
    return {
        "anterior_posterior": h["anterior"] / h["posterior"],
        "middle_posterior": h["middle"] / h["posterior"],
        "posterior_neighbour": h["posterior"] / float(np.mean(near)) if near else math.nan,
    }


_RATIO_OF_SHAPE = {
    "wedge": "anterior_posterior",
    "biconcave": "middle_posterior",
    "crush": "posterior_neighbour",
}


def column_truth(anat: Anatomy, shares: Mapping[str, float]) -> dict[str, list[dict]]:
    """Every body (C3 and below) with its heights, ratios and the deformity drawn, and every
    disc below C3 between two bodies (or a body and the sacrum) with its slip."""
    tab = _Tables(anat)
    segs = anat.segments
    labels = [seg.label for seg in segs if seg.kind == BODY and seg.label not in (11, 12)]
    heights = {v: body_heights(tab, v, shares) for v in labels}
    # Neighbours in the column: consecutive bodies (T1 follows C7, L1 follows T12).
    order = {v: i for i, v in enumerate(labels)}
    by_rank = {order[v]: h for v, h in heights.items()}
    bodies = []
    for v in labels:
        dfm = anat.deformity_at(v)
        bodies.append(
            {
                "level": L.level_name(v),
                "label": v,
                "shape": dfm.shape if dfm else "none",
                "grade": dfm.grade if dfm else 0,
                "drawn_loss": dfm.fraction if dfm else 0.0,
                "depth_mm": anat.segment(v).depth,
                "heights_mm": heights[v],
                "ratios": _ratios(by_rank, order[v]),
            }
        )
    discs = [
        {"disc": L.level_name(seg.label), "label": seg.label, **slip_truth(tab, seg.label)}
        for i, seg in enumerate(segs)
        if seg.kind == DISC and 0 < i < len(segs) - 1 and segs[i - 1].label not in (11, 12)
    ]
    return {"bodies": bodies, "discs": discs}


def calibrated(
    anat_of: Callable[[tuple[Deformity, ...]], Anatomy],
    deformities: tuple[Deformity, ...],
    shares: Mapping[str, float],
) -> Anatomy:
    """The anatomy with each deformity's drawn loss tuned so that the rendered body loses its
    grade's share (`Deformity.fraction`) on the ratio graders read for its shape.

    A body on a curved column is taller on its convex side (up to ~15 % in a lordosis), so a
    wedge drawn at 22.5 % could read as 10 % or 35 %. `anat_of` draws the anatomy for given
    deformities (same seed); three secant steps bring each ratio within 0.5 %.
    """
    drawn = {d.level: d.fraction for d in deformities}
    anat = anat_of(deformities)
    for _ in range(3):
        truth = {b["level"]: b for b in column_truth(anat, shares)["bodies"]}
        done = True
        for d in deformities:
            got = 1 - truth[d.level]["ratios"][_RATIO_OF_SHAPE[d.shape]]
            if abs(got - d.fraction) > 0.005:
                done = False
                drawn[d.level] = float(np.clip(drawn[d.level] + d.fraction - got, 0.02, 0.75))
        if done:
            break
        anat = anat_of(tuple(replace(d, loss=drawn[d.level]) for d in deformities))
    return anat


def part_truth(ph: Phantom, ids: Mapping[str, int], endplate_mm: float) -> nib.Nifti1Image:
    """Subregion labels (uint8, on the phantom's grid) of every vertebra and sacrum voxel.

    `ids`: part name -> label id (keys `arcus`, `spinous`, `costal_left`, `costal_right`,
    `body`, `endplate_superior`, `endplate_inferior`); `endplate_mm`: the endplate layers'
    thickness along the column. C1 is arcus throughout; the C2 dens is body.
    """
    anat = ph.anatomy
    tab = _Tables(anat)
    labels = np.asarray(ph.labels.dataobj)
    out = np.zeros(labels.shape, np.uint8)
    bone = np.isin(labels, [*L.VERTEBRAE, L.SACRUM])
    ijk = np.argwhere(bone)
    world = (ijk @ ph.labels.affine[:3, :3].T + ph.labels.affine[:3, 3]).astype(np.float32)
    s, a, lr = tab.frame(world)
    if anat.slips:
        a = a - anat.slip_offset(s).astype(np.float32)
    si = tab.sindex(s)
    cra, crl, _, _, kind, seglab, depth, width, ac, tseg = (c[si] for c in tab.slut[:10])
    lab = labels[bone]
    th = anat.arch_thickness
    e = ((a - ac) / np.maximum(depth / 2, 1e-3)) ** 2 + (lr / np.maximum(width / 2, 1e-3)) ** 2
    body = (np.isin(kind, (BODY, SACRUM))) & (seglab == lab) & (e < 1)
    body |= (lab == 12) & (s < tab.c2_top)  # the dens
    part = np.full(lab.shape, ids["arcus"], np.uint8)
    part[(a < -(cra + th)) & ~body] = ids["spinous"]
    lateral = (np.abs(lr) > crl + th) & (a >= -(cra + th)) & ~body
    part[lateral & (lr < 0)] = ids["costal_left"]
    part[lateral & (lr > 0)] = ids["costal_right"]
    part[body] = ids["body"]
    # Endplate layers: within endplate_mm of the body's (sunk) superior / inferior surface.
    heights = np.ones(256)
    for seg in anat.segments:
        heights[seg.label] = seg.height
    height = heights[lab]
    t = tseg * height
    d_top = np.zeros(lab.shape)
    d_bot = np.zeros(lab.shape)
    for v in np.unique(lab[body]):
        if anat.deformity_at(int(v)) is None:
            continue
        k = body & (lab == v)
        x = (a[k] - (ac[k] - depth[k] / 2)) / depth[k]
        d_top[k], d_bot[k] = anat.endplate_sink(int(v), x, lr[k] / (width[k] / 2))
    flat = body & (kind == BODY)
    part[flat & (height - t - d_bot < endplate_mm)] = ids["endplate_inferior"]
    part[flat & (lab != 12) & (t - d_top < endplate_mm)] = ids["endplate_superior"]
    sacrum = lab == L.SACRUM
    part[sacrum & ~body] = ids["arcus"]  # S1 has its superior endplate only
    part[sacrum & body & (t < endplate_mm)] = ids["endplate_superior"]
    part[lab == 11] = ids["arcus"]
    out[bone] = part
    img = nib.Nifti1Image(out, ph.labels.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(ph.labels.affine, code=1)
    img.set_sform(ph.labels.affine, code=1)
    return img
