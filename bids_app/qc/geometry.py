"""World-space geometry of a label image, shared by the previews and the measurements.

Everything here works in scanner RAS millimetres, so a result does not depend on the voxel
order, the voxel size or the obliquity of the grid a segmentation came on. Arrays sampled from
an image go through `sample`, which maps world points back to that image's voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_app.plumbing import labels as L

ANTERIOR = np.array([0.0, 1.0, 0.0])
SUPERIOR = np.array([0.0, 0.0, 1.0])
RIGHT = np.array([1.0, 0.0, 0.0])

# Canonical top-to-bottom order of every vertebra and disc id, L6 and its disc included.
SPINE_ORDER: tuple[int, ...] = (
    11,
    12,
    *(x for i in range(5) for x in (63 + i, 13 + i)),
    71,
    *(x for i in range(11) for x in (21 + i, 72 + i)),
    32,
    91,
    *(x for i in range(5) for x in (41 + i, 92 + i)),
    46,
    100,
    L.SACRUM,
)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def image_data(img: nib.Nifti1Image, dtype: type | None = None) -> np.ndarray:
    """Voxel array of a 3-D image (a 4-D image is averaged over time, as the engine does)."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data.mean(axis=3)
    elif data.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {data.shape}")
    return data.astype(dtype, copy=False) if dtype is not None else data


def load_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI image from disk; ValueError naming the file when it is another format."""
    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image derives from it
        raise ValueError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World RAS mm of voxel indices (n, 3) on the grid of `affine`."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def voxel_extent(affine: np.ndarray, direction: np.ndarray) -> float:
    """Length (mm) of one voxel of this grid projected onto a world unit direction."""
    return float(np.abs(direction @ affine[:3, :3]).sum())


def sample(
    data: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int, cval: float = 0.0
) -> np.ndarray:
    """Values of `data` (on the grid of `affine`) at world points (..., 3).

    order 0 gives the label of the nearest voxel centre, order 1 trilinear intensities; points
    outside the grid get `cval`. The result has the shape of `points` without its last axis.
    """
    inv = np.linalg.inv(affine)
    ijk = points.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    out = ndimage.map_coordinates(
        data,
        ijk.T,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
        output=np.float32 if order else data.dtype,
    )
    return out.reshape(points.shape[:-1])


def inside_grid(shape: tuple[int, ...], affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which world points (..., 3) fall inside the voxel boxes of a grid."""
    inv = np.linalg.inv(affine)
    ijk = points @ inv[:3, :3].T + inv[:3, 3]
    upper = np.asarray(shape[:3], float) - 0.5
    return np.all((ijk >= -0.5) & (ijk <= upper), axis=-1)


def grid_corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World positions (8, 3) of the outer corners of a grid's voxel boxes."""
    lo, hi = -0.5, np.asarray(shape[:3], float) - 0.5
    corners = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
    return to_world(affine, corners)


def plane_points(
    centre: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, half: float, step: float
) -> np.ndarray:
    """World points (n, n, 3) of a square planar grid: rows along `row_dir`, columns `col_dir`."""
    offs = np.arange(-half + step / 2, half, step)
    return centre + offs[:, None, None] * row_dir + offs[None, :, None] * col_dir


def plate_normal(points: np.ndarray, flatness: float = 0.5) -> np.ndarray | None:
    """Normal (unit, pointing superior) of a plate-like point cloud, or None if not a plate.

    The smallest principal axis of a disc is its axis: discs are much wider than they are
    high. A cloud whose two smallest variances are within `flatness` of each other has no
    clear plane, and its normal would be noise.
    """
    if points.shape[0] < 10:
        return None
    evals, evecs = np.linalg.eigh(np.cov(points.T))
    if evals[1] <= 0 or evals[0] / evals[1] > flatness:
        return None
    n = evecs[:, 0]
    return n if n @ SUPERIOR >= 0 else -n


def anterior_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anterior, right) unit vectors perpendicular to a spine `axis` (unit, superior)."""
    ant = ANTERIOR - (ANTERIOR @ axis) * axis
    if np.linalg.norm(ant) < 1e-6:  # axis points anteriorly: fall back on the right axis
        right = unit(RIGHT - (RIGHT @ axis) * axis)
        return unit(np.cross(axis, right)), right
    ant = unit(ant)
    return ant, np.cross(ant, axis)


@dataclass
class Centreline:
    """Smoothed spinal canal centreline: points 0.5 mm apart in world z, superior first."""

    points: np.ndarray  # (n, 3) world RAS mm
    tangents: np.ndarray  # (n, 3) unit vectors pointing superior

    def nearest(self, point: np.ndarray) -> int:
        return int(np.argmin(((self.points - point) ** 2).sum(1)))

    def is_interior(self, index: int, margin: int = 4) -> bool:
        """Whether a point index lies away from the centreline's cut ends."""
        return margin <= index < len(self.points) - margin

    def x_at(self, z: np.ndarray) -> np.ndarray:
        """Centreline x (mm) at world heights z, held constant beyond its ends."""
        return np.interp(z, self.points[::-1, 2], self.points[::-1, 0])


def fit_centreline(world: np.ndarray, weights_z_mm: float) -> Centreline | None:
    """Centreline through world points (n, 3) of a tubular mask, as x(z), y(z).

    Means per 1 mm slab of world z, then Gaussian kernel smoothing with sigma
    `weights_z_mm`, so thick axial slices (gaps between slabs) and noisy borders both vanish.
    The spine runs head to foot in every orientation a scanner gives, so z is a valid
    parameter for it.
    """
    if world.shape[0] < 20:
        return None
    z0 = np.floor(world[:, 2].min())
    idx = np.floor(world[:, 2] - z0).astype(int)
    counts = np.bincount(idx).astype(float)
    sums = [np.bincount(idx, weights=world[:, k]) for k in (0, 1)]
    filled = counts > 0
    zc = z0 + 0.5 + np.flatnonzero(filled)
    xc, yc, wc = sums[0][filled] / counts[filled], sums[1][filled] / counts[filled], counts[filled]
    zq = np.arange(zc.max(), zc.min() - 1e-6, -0.5)
    if zq.size < 3:
        return None
    kern = np.exp(-0.5 * ((zq[:, None] - zc[None, :]) / weights_z_mm) ** 2) * wc[None, :]
    norm = kern.sum(1)
    xq, yq = kern @ xc / norm, kern @ yc / norm
    pts = np.stack([xq, yq, zq], 1)
    dx, dy = np.gradient(xq, zq), np.gradient(yq, zq)
    tang = np.stack([dx, dy, np.ones_like(dx)], 1)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    return Centreline(points=pts, tangents=tang)


@dataclass
class LabelGeometry:
    """A final label image with lazily computed per-label geometry (all in world mm).

    `data` is the label array on the image's own grid; `affine` maps its voxel indices to
    world RAS mm.
    """

    data: np.ndarray
    affine: np.ndarray
    _coords: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _centroids: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    # Results of costlier analyses of these labels, by the caller's key: the QC's tables,
    # angles and figures ask for the same disc frames and endplate fits (alignment.py).
    memo: dict[tuple, object] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_image(cls, img: nib.Nifti1Image) -> LabelGeometry:
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"label image must be 3-D, got shape {data.shape}")
        if data.dtype.kind == "f":
            data = np.rint(data)
        return cls(data=data.astype(np.uint8, copy=False), affine=np.asarray(img.affine, float))

    @cached_property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))

    @cached_property
    def voxel_volume(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @cached_property
    def boxes(self) -> dict[int, tuple[slice, slice, slice]]:
        """Bounding box (index slices) of every label present."""
        objs = ndimage.find_objects(self.data)
        return {i + 1: box for i, box in enumerate(objs) if box is not None}

    @property
    def present(self) -> list[int]:
        return sorted(self.boxes)

    def voxel_indices(self, label: int) -> np.ndarray:
        """Voxel indices (n, 3) of one label on the image grid."""
        box = self.boxes[label]
        ijk = np.argwhere(self.data[box] == label)
        return ijk + np.array([s.start for s in box])

    def coords(self, label: int) -> np.ndarray:
        """World RAS mm (n, 3) of the voxel centres of one label."""
        if label not in self._coords:
            self._coords[label] = to_world(self.affine, self.voxel_indices(label).astype(float))
        return self._coords[label]

    def count(self, label: int) -> int:
        return int(self.coords(label).shape[0]) if label in self.boxes else 0

    def centroid(self, label: int) -> np.ndarray:
        """World RAS mm (3,) of a label's centroid, computed once (read-only)."""
        if label not in self._centroids:
            centre = self.coords(label).mean(0)
            centre.flags.writeable = False
            self._centroids[label] = centre
        return self._centroids[label]

    @cached_property
    def component_sizes(self) -> dict[int, list[int]]:
        """Voxel counts of the 26-connected components of every label, largest first.

        Each label's components lie in its box, so each is labelled there (not in a pass
        over the whole image).
        """
        out: dict[int, list[int]] = {}
        for label, box in self.boxes.items():
            cc, n = cc3d.connected_components(
                self.data[box] == label, connectivity=26, return_N=True
            )
            out[label] = sorted(np.bincount(cc.ravel(), minlength=n + 1)[1:].tolist(), reverse=True)
        return out

    def touches_edge(self, label: int, direction: np.ndarray | None = None) -> bool:
        """Whether a label reaches the border of the field of view.

        With a `direction`, only borders crossed when moving along it count: a disc cut by the
        top of the field of view is truncated along the spine axis, while transverse processes
        cut at the lateral border leave its height intact.
        """
        for k, (sl, n) in enumerate(zip(self.boxes[label], self.data.shape, strict=True)):
            if sl.start > 0 and sl.stop < n:
                continue
            if direction is None or abs(unit(self.affine[:3, k]) @ direction) > 0.5:
                return True
        return False

    @cached_property
    def centreline(self) -> Centreline | None:
        """Canal centreline from the canal and cord labels (their main components)."""
        boxes = [self.boxes[x] for x in (L.CORD, L.CANAL) if x in self.boxes]
        if not boxes:
            return None
        box = tuple(
            slice(min(b[k].start for b in boxes), max(b[k].stop for b in boxes)) for k in range(3)
        )
        cc = cc3d.connected_components(np.isin(self.data[box], (L.CORD, L.CANAL)), connectivity=26)
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        keep = np.flatnonzero(sizes >= 0.1 * sizes.max())
        ijk = np.argwhere(np.isin(cc, keep)).astype(float) + np.array([s.start for s in box], float)
        sigma = max(5.0, 1.5 * voxel_extent(self.affine, SUPERIOR))
        return fit_centreline(to_world(self.affine, ijk), sigma)

    def spine_axis_near(self, point: np.ndarray) -> np.ndarray | None:
        """Canal tangent at the centreline point nearest to `point` (None without a canal)."""
        cl = self.centreline
        if cl is None:
            return None
        return cl.tangents[cl.nearest(point)]

    def disc_axis(self, label: int) -> np.ndarray | None:
        """Axis of a disc: its plate normal when the voxels resolve it, else the canal tangent."""
        return self.disc_frame(label)[0]

    def disc_frame(self, label: int) -> tuple[np.ndarray | None, bool]:
        """(axis, resolved) of a disc; `resolved` when it is >= 3 voxels thick along its normal.

        The plate normal (smallest principal axis) follows the disc itself, wedge and tilt
        included. On thick slices a thin disc spans one or two slices, whose plane would
        pass for the disc's, so an unresolved disc takes the canal tangent at its level.
        """
        key = ("disc_frame", label)
        if key not in self.memo:
            self.memo[key] = self._disc_frame(label)
        return self.memo[key]  # type: ignore[return-value]

    def _disc_frame(self, label: int) -> tuple[np.ndarray | None, bool]:
        pts = self.coords(label)
        normal = plate_normal(pts)
        if normal is not None:
            thickness = np.sqrt(12 * np.var((pts - self.centroid(label)) @ normal))
            if thickness >= 3 * voxel_extent(self.affine, normal):
                return normal, True
        tangent = self.spine_axis_near(self.centroid(label))
        return (tangent if tangent is not None else normal), False

    def neighbours(self, label: int) -> tuple[int | None, int | None]:
        """Present labels directly above and below `label` in the spine order."""
        present = [x for x in SPINE_ORDER if x in self.boxes]
        if label not in present:
            return None, None
        i = present.index(label)
        above = present[i - 1] if i > 0 else None
        below = present[i + 1] if i + 1 < len(present) else None
        return above, below
