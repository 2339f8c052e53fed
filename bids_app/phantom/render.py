"""Render a phantom anatomy into an MR-like NIfTI plus exact ground-truth labels.

Every sample point is mapped from world RAS mm into the spine's own frame (s along the
canal, a anterior, l right) with the centreline tables of `Anatomy`, and the tissue and label
are decided there by simple solids. Partial volume is real: voxels whose neighbourhood holds
more than one tissue are re-rendered on a finer sub-grid and averaged. Labels are the label at
each voxel centre, so the ground truth is exactly what a nearest-neighbour sampling of the
continuous anatomy gives on the image grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt
from scipy import ndimage

from bids_app.phantom.anatomy import (
    BODY,
    C1,
    DISC,
    SACRUM,
    Anatomy,
    Deformity,
    Lesion,
    Slip,
    random_anatomy,
)
from bids_app.plumbing import labels as L

# Tissue classes and their (T2w, T1w) intensities relative to CSF/fat. Cord lesions are
# hyperintense on T2w and slightly hypointense on T1w, as demyelination and oedema are.
AIR, FAT, MUSCLE, SOFT, MARROW, CORTEX, ANNULUS, NUCLEUS, CSF, CORD, BONE, LESION = range(12)
TISSUE_INTENSITY = {
    "T2w": [0.0, 0.72, 0.22, 0.35, 0.38, 0.12, 0.30, 0.88, 1.00, 0.48, 0.12, 0.82],
    "T1w": [0.0, 0.95, 0.35, 0.42, 0.66, 0.15, 0.32, 0.36, 0.12, 0.52, 0.15, 0.40],
}

FOVS = ("whole", "cervical", "cervicothoracic", "thoracic", "lumbar")
VOXEL_SIZES = {  # zooms along the world (R, A, S) axes
    "iso1": (1.0, 1.0, 1.0),
    "sag3": (3.0, 0.8, 0.8),
    "ax4": (0.7, 0.7, 4.0),
}


@dataclass(frozen=True)
class Acquisition:
    """How the phantom is imaged: field of view, voxel size, orientation, contrast."""

    fov: str = "whole"
    voxel: str = "iso1"
    axcodes: str = "RAS"
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    contrast: str = "T2w"
    lr_extent: float | None = None  # mm; default depends on the voxel size
    snr: float = 25.0


@dataclass
class Phantom:
    """A rendered phantom: `image` and `labels` share one grid (shape and affine)."""

    image: nib.Nifti1Image
    labels: nib.Nifti1Image  # lesions stay cord (1): the cord label holds them
    lesions: nib.Nifti1Image  # 0, or the lesion's 1-based index in anatomy.lesions
    anatomy: Anatomy
    acquisition: Acquisition
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- look-up tables
_S_STEP = 0.1  # mm per s-bin
_Z_STEP = 0.1  # mm per z-bin


class _Tables:
    """Per-z frame table and per-s anatomy table, gathered per sample instead of searched."""

    def __init__(self, anat: Anatomy) -> None:
        self.anat = anat
        s = anat.s_table
        x, y, z = anat.x_table, anat.y_table, anat.z_table
        tx, ty, tz = (np.gradient(v, s) for v in (x, y, z))
        norm = np.sqrt(tx**2 + ty**2 + tz**2)
        tx, ty, tz = tx / norm, ty / norm, tz / norm
        nx, ny, nz = -ty * tx, 1 - ty * ty, -ty * tz  # anterior: y-axis minus its tangent part
        nn = np.sqrt(nx**2 + ny**2 + nz**2)
        nx, ny, nz = nx / nn, ny / nn, nz / nn
        bx, by = ty * nz - tz * ny, tz * nx - tx * nz  # B = T x N (points right)
        self.z_top = float(z[0])
        zq = np.arange(self.z_top, float(z[-1]), -_Z_STEP)
        cols = [x, y, s, tx, ty, nx, ny, bx, by]
        # One contiguous array per column: a gathered column is then contiguous too.
        self.zlut = [np.interp(-zq, -z, c).astype(np.float32) for c in cols]

        self.s0 = float(s[0])
        sq = np.arange(self.s0, float(s[-1]), _S_STEP)
        ncols = 12
        lut = np.zeros((sq.size, ncols), np.float32)
        k = anat.radius_knots_s
        lut[:, 0] = np.interp(sq, k, anat.canal_radii[:, 0])
        lut[:, 1] = np.interp(sq, k, anat.canal_radii[:, 1])
        taper = np.clip((anat.cord_end_s - sq) / (20 * anat.scale), 0, 1)
        lut[:, 2] = np.interp(sq, k, anat.cord_radii[:, 0]) * np.sqrt(taper)
        lut[:, 3] = np.interp(sq, k, anat.cord_radii[:, 1]) * np.sqrt(taper)
        lut[sq > anat.canal_end_s, 0:2] = 0
        th = anat.arch_thickness
        for seg in anat.segments:
            rows = (sq >= seg.s_top) & (sq < seg.s_bot)
            t = (sq[rows] - seg.s_top) / seg.height
            depth: float | np.ndarray = seg.depth
            width: float | np.ndarray = seg.width
            if seg.kind == SACRUM:  # wedge: shrinks caudally
                depth = seg.depth * (1 - 0.6 * t)
                width = seg.width * (1 - 0.7 * t)
            lut[rows, 4] = seg.kind
            lut[rows, 5] = seg.label
            lut[rows, 6] = depth
            lut[rows, 7] = width
            lut[rows, 8] = lut[rows, 0] + th * 0.5 + depth / 2  # body centre (a)
            lut[rows, 9] = t
        # Narrowings shrink the canal and cord AP radii only, bodies and discs staying put.
        ap = anat.ap_factor(sq)
        lut[:, 0] *= ap
        lut[:, 2] *= ap
        # Posterior arch of each vertebra: from 15 % down its body to halfway into its disc.
        segs = anat.segments
        for i, seg in enumerate(segs):
            if seg.kind not in (BODY, C1):
                continue
            disc = segs[i + 1] if i + 1 < len(segs) and segs[i + 1].kind == DISC else None
            top = seg.s_top + 0.15 * seg.height
            bot = seg.s_bot + (0.5 * disc.height if disc else 0.0)
            rows = (sq >= top) & (sq < bot)
            lut[rows, 10] = seg.label
            lut[rows, 11] = (sq[rows] - top) / (bot - top)
        self.slut = [np.ascontiguousarray(lut[:, k]) for k in range(ncols)]
        # Lesions: (centre s, centre a, semi-axes along s, a, l).
        self.lesions = [
            (anat.lesion_centre_s(les), les.offset, les.length / 2, les.width / 2, les.lr / 2)
            for les in anat.lesions
        ]
        # Wedged or dished bodies: label -> (top s, height, disc above, disc below).
        self.sinks = {
            seg.label: (seg.s_top, seg.height, segs[i - 1].label, segs[i + 1].label)
            for i, seg in enumerate(segs)
            if (dfm := anat.deformity_at(seg.label)) is not None and dfm.shape != "crush"
        }
        c2 = anat.segment(12)
        self.c2_top = c2.s_top
        self.c2_ac = float(np.interp(c2.s_top, sq, lut[:, 8]))
        self.n_s = sq.size

    def frame(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, a, l) spine-frame coordinates (mm) of world RAS points (n, 3)."""
        zi = np.clip(
            ((self.z_top - pts[:, 2]) / _Z_STEP).astype(np.int32), 0, self.zlut[0].size - 1
        )
        x, y, s, tx, ty, nx, ny, bx, by = (col[zi] for col in self.zlut)
        dx = pts[:, 0] - x
        dy = pts[:, 1] - y
        return s + dx * tx + dy * ty, dx * nx + dy * ny, dx * bx + dy * by

    def sindex(self, s: np.ndarray) -> np.ndarray:
        """Row of the s table for each arc length."""
        return np.clip(((s - self.s0) / _S_STEP).astype(np.int32), 0, self.n_s - 1)


def _classify(tab: _Tables, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue class, final label and lesion index (all uint8) of world points (n, 3)."""
    anat = tab.anat
    s, a, lr = tab.frame(pts.astype(np.float32))
    if anat.slips:  # the column above a slipped disc, shifted anteriorly
        a = a - anat.slip_offset(s).astype(np.float32)
    si = tab.sindex(s)
    cra, crl, kra, krl, kind, seglab, depth, width, ac, tseg = (c[si] for c in tab.slut[:10])
    alr = np.abs(lr)
    th = anat.arch_thickness
    sc = anat.scale
    n = s.size
    tissue = np.full(n, AIR, np.uint8)
    label = np.zeros(n, np.uint8)

    # Body outline: neck narrower than the trunk; fat rim, paraspinal muscle, soft organs.
    neck = s < anat.segment(17).s_bot
    t_ap = np.where(neck, 62.0, 105.0) * sc
    t_lr = np.where(neck, 60.0, 150.0) * sc
    e_torso = ((a - 0.45 * t_ap) / t_ap) ** 2 + (lr / t_lr) ** 2
    inside = e_torso < 1
    tissue[inside] = SOFT
    tissue[inside & (a < 0) & (alr < 45 * sc)] = MUSCLE
    tissue[inside & (e_torso > 0.78)] = FAT

    # Skull base above C1 (unlabelled bone gives the network its cranial context).
    skull = (
        (s < -3 * sc)
        & (alr < 40 * sc)
        & (
            ((a < -(cra + 2)) & (a > -(cra + 18 * sc)))
            | ((s < -9 * sc) & (np.abs(a - tab.c2_ac) < 7 * sc) & (alr < 12 * sc))
        )
    )
    tissue[skull] = BONE

    canal_e = (a / np.maximum(cra, 1e-3)) ** 2 + (lr / np.maximum(crl, 1e-3)) ** 2
    in_canal = (canal_e < 1) & (cra > 0)

    # Posterior elements, looked up at an s shifted along the sloping spinous processes.
    behind = np.maximum(-a - cra, 0)
    slope = np.where(s < anat.segment(17).s_bot, 0.35, np.where(kind == DISC, 0.9, 0.8))
    slope = np.where(s > anat.segment(32).s_bot, 0.15, slope)
    pi = tab.sindex(s - slope * behind)
    arch_lab, arch_t = tab.slut[10][pi], tab.slut[11][pi]
    has_arch = arch_lab > 0
    ring = (((a / (cra + th)) ** 2 + (lr / (crl + th)) ** 2) < 1) & ~in_canal & (a < ac)
    spinous = (
        (a < -(cra + 0.5 * th))
        & (a > -(cra + th + 38 * sc))
        & (alr < 3.0 * sc)
        & (np.abs(arch_t - 0.5) < 0.35)
    )
    transverse = (
        (alr > crl)
        & (alr < crl + th + 18 * sc)
        & (np.abs(a + 2 * sc) < 4.5 * sc)
        & (np.abs(arch_t - 0.5) < 0.25)
    )
    post = has_arch & (ring | spinous | transverse)
    tissue[post] = CORTEX
    label[post] = arch_lab[post].astype(np.uint8)
    # Ribs: continue the thoracic transverse processes laterally (unlabelled).
    thoracic = (arch_lab >= 21) & (arch_lab <= 32)
    x0 = crl + th + 14 * sc
    rib = (
        thoracic
        & (alr > x0)
        & (alr < x0 + 40 * sc)
        & (np.abs(a + 2 * sc + (alr - x0) * 0.35) < 4 * sc)
        & (np.abs(arch_t - 0.5) < 0.18)
    )
    tissue[rib] = BONE

    # Vertebral bodies and discs: elliptic cylinders anterior to the canal.
    e = ((a - ac) / np.maximum(depth / 2, 1e-3)) ** 2 + (lr / np.maximum(width / 2, 1e-3)) ** 2
    body = (kind == BODY) & (e < 1)
    rim = (e > (1 - 3.0 / np.maximum(depth, 1)) ** 2) | (tseg < 0.06) | (tseg > 0.94)
    gap = np.zeros(n, bool)
    if tab.sinks:
        gap, gap_label, edge = _sunk(tab, s, a, lr, seglab, ac, depth, width, body)
        body &= ~gap
        rim |= edge < 0.06
    tissue[body] = np.where(rim[body], CORTEX, MARROW)
    label[body] = seglab[body].astype(np.uint8)
    disc = (kind == DISC) & (e < 1)
    nucleus = (e < 0.4) & (tseg > 0.15) & (tseg < 0.85)
    tissue[disc] = np.where(nucleus[disc], NUCLEUS, ANNULUS)
    label[disc] = seglab[disc].astype(np.uint8)
    if gap.any():  # the adjacent disc fills the space a sunk endplate left
        tissue[gap] = np.where(e[gap] < 0.4, NUCLEUS, ANNULUS)
        label[gap] = gap_label[gap]
    # Sacrum: the wedge plus a posterior plate enclosing the sacral canal.
    sac = (kind == SACRUM) & (
        (e < 1) | ((a < ac) & (a > -(cra + th + 8 * sc)) & (alr < crl + th + 12 * sc) & ~in_canal)
    )
    tissue[sac] = MARROW
    label[sac] = L.SACRUM
    # C1: ring without body, anterior arch in front of the dens, lateral masses.
    dens_r = 5.0 * sc
    c1 = kind == C1
    ant = (
        c1 & (a > tab.c2_ac + dens_r + 1 * sc) & (a < tab.c2_ac + dens_r + 7 * sc) & (alr < 11 * sc)
    )
    lat = (
        c1
        & (alr > crl - 1)
        & (alr < crl + 10 * sc)
        & (a > -3 * sc)
        & (a < tab.c2_ac + dens_r + 5 * sc)
    )
    c1_all = ant | lat | (c1 & ring)
    tissue[c1_all] = CORTEX
    label[c1_all] = 11
    # C2 dens rises from the C2 body into the C1 ring.
    dens = (
        (s > tab.c2_top - 15 * sc)
        & (s < tab.c2_top + 1)
        & (((a - tab.c2_ac) ** 2 + lr**2) < dens_r**2)
    )
    tissue[dens] = MARROW
    label[dens] = 12

    # Canal (CSF) and cord last: they win every overlap.
    tissue[in_canal] = CSF
    label[in_canal] = L.CANAL
    in_cord = (
        in_canal
        & (kra > 0)
        & (((a / np.maximum(kra, 1e-3)) ** 2 + (lr / np.maximum(krl, 1e-3)) ** 2) < 1)
    )
    tissue[in_cord] = CORD
    label[in_cord] = L.CORD
    lesion = np.zeros(n, np.uint8)
    for i, (s_c, a_c, hs, ha, hl) in enumerate(tab.lesions, start=1):
        inside = in_cord & (((s - s_c) / hs) ** 2 + ((a - a_c) / ha) ** 2 + (lr / hl) ** 2 < 1)
        tissue[inside] = LESION
        lesion[inside] = i
    return tissue, label, lesion


def _sunk(
    tab: _Tables,
    s: np.ndarray,
    a: np.ndarray,
    lr: np.ndarray,
    seglab: np.ndarray,
    ac: np.ndarray,
    depth: np.ndarray,
    width: np.ndarray,
    body: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body samples of wedged or dished vertebrae left above or below their sunk endplates.

    Returns (gap mask, label of the disc that fills the gap, distance of every body sample
    to its nearest sunk endplate as a share of the body height, inf elsewhere), all (n,).
    """
    gap = np.zeros(s.shape, bool)
    gap_label = np.zeros(s.shape, np.uint8)
    edge = np.full(s.shape, np.inf, np.float32)
    for label, (top, height, above, below) in tab.sinks.items():
        idx = np.flatnonzero(body & (seglab == label))
        if idx.size == 0:
            continue
        x = (a[idx] - (ac[idx] - depth[idx] / 2)) / depth[idx]
        d_top, d_bot = tab.anat.endplate_sink(label, x, lr[idx] / (width[idx] / 2))
        t = s[idx] - top
        up, down = t < d_top, height - t < d_bot
        gap[idx[up | down]] = True
        gap_label[idx[up]] = above
        gap_label[idx[down]] = below
        edge[idx] = np.minimum(t - d_top, height - t - d_bot) / height
    return gap, gap_label, edge


# --------------------------------------------------------------------------- acquisition grid
def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def fov_s_range(anat: Anatomy, fov: str) -> tuple[float, float]:
    """Arc-length range (mm) covered by a named field of view."""
    sc = anat.scale
    if fov == "whole":
        return -22 * sc, anat.s_total + 8 * sc
    if fov == "cervical":
        return -22 * sc, anat.segment(22).s_bot
    if fov == "cervicothoracic":
        return -22 * sc, anat.segment(28).s_bot
    if fov == "thoracic":
        return anat.segment(16).s_top, anat.segment(42).s_bot
    if fov == "lumbar":
        return anat.segment(30).s_top, anat.s_total + 8 * sc
    raise ValueError(f"unknown field of view {fov!r}; choose from {', '.join(FOVS)}")


def acquisition_grid(anat: Anatomy, acq: Acquisition) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel->world RAS affine of the image grid for this acquisition."""
    s0, s1 = fov_s_range(anat, acq.fov)
    ss = np.linspace(s0, s1, 64)
    centres = np.array([anat.centre_at_s(v) for v in ss])
    zooms = np.array(VOXEL_SIZES[acq.voxel], float)
    lr = acq.lr_extent or (72.0 if acq.voxel != "ax4" else 150.0) * anat.scale
    lo = np.array(
        [centres[:, 0].mean() - lr / 2, centres[:, 1].min() - 75 * anat.scale, centres[:, 2].min()]
    )
    hi = np.array(
        [centres[:, 0].mean() + lr / 2, centres[:, 1].max() + 85 * anat.scale, centres[:, 2].max()]
    )
    ornt = axcodes2ornt(tuple(acq.axcodes))
    lin = np.zeros((3, 3))
    shape = []
    origin = np.zeros(3)
    for i, (j, sign) in enumerate(ornt.astype(int)):
        lin[j, i] = sign * zooms[j]
        shape.append(int(np.ceil((hi[j] - lo[j]) / zooms[j])))
        origin[j] = lo[j] + zooms[j] / 2 if sign > 0 else hi[j] - zooms[j] / 2
    rot = _rotation(acq.oblique_deg)
    centre = (lo + hi) / 2
    affine = np.eye(4)
    affine[:3, :3] = rot @ lin
    affine[:3, 3] = centre + rot @ (origin - centre)
    return (shape[0], shape[1], shape[2]), affine


def _world_points(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (idx @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def render(anat: Anatomy, acq: Acquisition, noise_seed: int = 0) -> Phantom:
    """Image (int16, MR-like) and labels (uint8) of `anat` seen through `acq`."""
    rng = np.random.default_rng(noise_seed)
    tab = _Tables(anat)
    shape, affine = acquisition_grid(anat, acq)
    values = np.asarray(TISSUE_INTENSITY[acq.contrast], np.float32)
    # One draw per tissue of the lesion-free model (so older phantoms stay identical); a
    # lesion shares the cord's scanner factor.
    jitter = rng.uniform(0.88, 1.12, BONE + 1).astype(np.float32)
    values = values * np.append(jitter, jitter[CORD])
    values[AIR] = 0.0

    # Pass 1: one sample per voxel centre gives the labels and a first tissue map.
    grid = np.stack(
        np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), -1
    ).reshape(-1, 3)
    tissue = np.empty(grid.shape[0], np.uint8)
    labels = np.empty(grid.shape[0], np.uint8)
    lesions = np.empty(grid.shape[0], np.uint8)
    chunk = 1 << 20
    for i in range(0, grid.shape[0], chunk):
        tissue[i : i + chunk], labels[i : i + chunk], lesions[i : i + chunk] = _classify(
            tab, _world_points(affine, grid[i : i + chunk])
        )
    tissue = tissue.reshape(shape)
    labels = labels.reshape(shape)
    lesions = lesions.reshape(shape)
    intensity = values[tissue]

    # Pass 2: partial volume where the 3x3x3 neighbourhood mixes tissues.
    mixed = ndimage.maximum_filter(tissue, 3) != ndimage.minimum_filter(tissue, 3)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    sub = np.maximum(1, np.ceil(zooms / 0.55)).astype(int)
    offs = (
        np.stack(np.meshgrid(*((np.arange(k) + 0.5) / k - 0.5 for k in sub), indexing="ij"), -1)
        .reshape(-1, 3)
        .astype(np.float32)
    )
    idx = np.argwhere(mixed).astype(np.float32)
    acc = np.zeros(idx.shape[0], np.float32)
    per = max(1, chunk // offs.shape[0])
    for i in range(0, idx.shape[0], per):
        pts = (idx[i : i + per, None, :] + offs[None]).reshape(-1, 3)
        t = _classify(tab, _world_points(affine, pts))[0]
        acc[i : i + per] = values[t].reshape(-1, offs.shape[0]).mean(1)
    intensity[mixed] = acc

    # Smooth multiplicative bias field, Rician noise, arbitrary scanner scale.
    centre = np.array(shape) / 2
    coords = [(np.arange(n) - c) / max(shape) for n, c in zip(shape, centre, strict=True)]
    bias = np.zeros(shape, np.float32)
    for k in range(3):
        amp = rng.uniform(-0.25, 0.25, 3)
        bias += (
            (amp[0] * np.cos(np.pi * coords[k] * rng.uniform(0.5, 1.5)))
            .reshape([-1 if d == k else 1 for d in range(3)])
            .astype(np.float32)
        )
    intensity *= np.exp(bias)
    sigma = 1.0 / acq.snr
    noisy = np.sqrt(
        (intensity + rng.normal(0, sigma, shape).astype(np.float32)) ** 2
        + rng.normal(0, sigma, shape).astype(np.float32) ** 2
    )
    scale = rng.uniform(300, 2500)
    data = np.clip(np.round(noisy * scale), 0, 32767).astype(np.int16)

    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    seg = nib.Nifti1Image(labels, affine)
    seg.header.set_xyzt_units("mm", "sec")
    les = nib.Nifti1Image(lesions, affine)
    les.header.set_xyzt_units("mm", "sec")
    for img in (image, seg, les):
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    meta = {
        "anatomy_seed": anat.seed,
        "noise_seed": noise_seed,
        "scale": anat.scale,
        "n_lumbar": anat.n_lumbar,
        "acquisition": asdict(acq),
        "curves": anat.curves,
        "narrowing": {L.level_name(k): v for k, v in anat.narrowing.items()},
        "lesions": [asdict(les) for les in anat.lesions],
    }
    if anat.deformities or anat.slips:
        meta["deformities"] = [asdict(d) for d in anat.deformities]
        meta["slips"] = [asdict(x) for x in anat.slips]
    return Phantom(image=image, labels=seg, lesions=les, anatomy=anat, acquisition=acq, meta=meta)


def render_phantom(
    seed: int,
    acq: Acquisition | None = None,
    *,
    n_lumbar: int | None = None,
    noise_seed: int | None = None,
    narrowing: Mapping[str, float] | None = None,
    lesions: tuple[Lesion, ...] = (),
    deformities: tuple[Deformity, ...] = (),
    slips: tuple[Slip, ...] = (),
) -> Phantom:
    """One call for the common case: random anatomy from `seed`, rendered through `acq`.

    `narrowing` ({"C5-C6": 0.5}) shrinks the canal and cord AP size at those discs;
    `lesions` are drawn in the cord (the anatomy, hence the spine labels, does not change);
    `deformities` and `slips` deform vertebral bodies and shift the column (truth:
    `bids_app.phantom.vertebrae`).
    """
    anat = random_anatomy(
        seed,
        n_lumbar=n_lumbar,
        narrowing=narrowing,
        lesions=lesions,
        deformities=deformities,
        slips=slips,
    )
    return render(anat, acq or Acquisition(), noise_seed=seed if noise_seed is None else noise_seed)
