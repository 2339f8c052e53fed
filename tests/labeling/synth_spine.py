"""Hand-made raw network outputs: a column of box discs and vertebrae beside a canal tube.

Arrays are on a 1 mm RAS grid (axis 0 = x, axis 1 = y = anterior, axis 2 = z = superior),
like the maps the labeling code receives. Raw class ids follow docs/method.md §4.1 (step 1) and
§4.2 (step 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Raw class ids per step.
STEP_CLASSES = {
    1: {"c1": 7, "odd": 6, "even": 6, "sacrum": 6, "canal": 8, "cord": 9},
    2: {"c1": 7, "odd": 7, "even": 8, "sacrum": 9, "canal": 10, "cord": 11},
}
GENERIC_DISC = 1
C2C3, C7T1, T12L1, L5S = 2, 3, 4, 5

# Final disc labels of a complete spine, top to bottom (no L5-L6).
FULL_DISCS = (63, 64, 65, 66, 67, 71, *range(72, 83), 91, 92, 93, 94, 95, 100)
RAW_OF_DISC = {63: C2C3, 71: C7T1, 91: T12L1, 100: L5S}

Box = tuple[slice, slice, slice]


def raw_discs(discs: Sequence[int], landmarks: Sequence[int] = (63, 71, 91, 100)) -> list[int]:
    """Raw disc classes for final disc labels: landmark class where kept, generic elsewhere."""
    return [RAW_OF_DISC[d] if d in RAW_OF_DISC and d in landmarks else GENERIC_DISC for d in discs]


@dataclass
class Column:
    seg: np.ndarray
    disc_boxes: list[Box] = field(default_factory=list)  # top to bottom
    vertebra_boxes: list[Box] = field(default_factory=list)  # top to bottom, sacrum last

    @property
    def disc_centres(self) -> list[tuple[int, int, int]]:
        return [_centre_of(box) for box in self.disc_boxes]

    @property
    def vertebra_centres(self) -> list[tuple[int, int, int]]:
        return [_centre_of(box) for box in self.vertebra_boxes]

    def disc_labels(self, labels: np.ndarray) -> list[int]:
        """Label found in each disc box, top to bottom (0 when the disc is unlabelled)."""
        return [int(labels[box].max()) for box in self.disc_boxes]

    def vertebra_labels(self, labels: np.ndarray) -> list[int]:
        return [int(labels[box].max()) for box in self.vertebra_boxes]

    def set_disc(self, k: int, n_voxels: int, raw: int = GENERIC_DISC, n_raw: int | None = None):
        """Redraw disc k with only its first `n_voxels` voxels (C order in its box).

        The first `n_raw` of them (all by default) get class `raw`, the rest generic disc.
        """
        sub = self.seg[self.disc_boxes[k]]
        sub[...] = 0
        flat = np.zeros(sub.size, dtype=sub.dtype)
        flat[:n_voxels] = GENERIC_DISC
        flat[: n_voxels if n_raw is None else n_raw] = raw
        sub[...] = flat.reshape(sub.shape)

    def paint_discs(self, labels: Sequence[int]) -> np.ndarray:
        """A localizer-like map: disc box k painted with labels[k] (0 leaves it empty)."""
        loc = np.zeros_like(self.seg)
        for box, lab in zip(self.disc_boxes, labels, strict=True):
            loc[box] = lab
        return loc

    def canal_voxel(self) -> tuple[int, int, int]:
        """A canal (not cord) voxel at mid height."""
        return _canal_voxel(self.seg)


def _centre_of(box: Box) -> tuple[int, int, int]:
    return tuple((s.start + s.stop) // 2 for s in box)  # type: ignore[return-value]


def _canal_voxel(seg: np.ndarray) -> tuple[int, int, int]:
    nx, nz = seg.shape[0], seg.shape[2]
    cx, cy = _centre(nx, nz, nz // 2, 0.0, 0.0)
    return (cx + 3, cy, nz // 2)


def draw_column(
    disc_classes: Sequence[int],
    *,
    step: int = 1,
    vertebrae_above: int = 2,
    sacrum: bool = True,
    curve: float = 0.0,
    lateral: float = 0.0,
    shape_xy: tuple[int, int] = (40, 64),
    disc_size: tuple[int, int, int] = (14, 12, 3),
    vertebra_height: int = 5,
    margin: int = 6,
) -> Column:
    """Draw a spine, top to bottom, with one disc per entry of `disc_classes`.

    `vertebrae_above` vertebrae sit above the first disc (C1 is the top one when it is 2),
    one vertebra between consecutive discs, and a sacrum below the last disc. In step 2 the
    vertebrae alternate odd (7) / even (8) classes from the top. `curve` bends the column
    forward (in y) and `lateral` sideways (in x) by up to that many voxels along a half sine.
    """
    cls = STEP_CLASSES[step]
    wx, wy, dz = disc_size
    items: list[tuple[str, int]] = [
        ("vertebra", cls["c1"] if k == 0 and vertebrae_above == 2 else -1)
        for k in range(vertebrae_above)
    ]
    for i, disc in enumerate(disc_classes):
        items.append(("disc", disc))
        if i < len(disc_classes) - 1:
            items.append(("vertebra", -1))
    if sacrum:
        items.append(("vertebra", cls["sacrum"]))
    heights = [dz if kind == "disc" else vertebra_height for kind, _ in items]
    nz = sum(heights) + 2 * margin
    nx, ny = shape_xy
    column = Column(np.zeros((nx, ny, nz), dtype=np.uint8))
    z_top = nz - margin
    parity = 0
    for (kind, raw), h in zip(items, heights, strict=True):
        z0, z_top = z_top - h, z_top - h
        cx, cy = _centre(nx, nz, z0 + h // 2, curve, lateral)
        box = (slice(cx - wx // 2, cx + wx // 2), slice(cy + 6, cy + 6 + wy), slice(z0, z0 + h))
        if kind == "disc":
            column.disc_boxes.append(box)
        else:
            if raw == -1:
                raw = cls["odd"] if parity % 2 == 0 else cls["even"]
            parity += 1
            column.vertebra_boxes.append(box)
        column.seg[box] = raw
    _draw_canal(column.seg, cls, curve, lateral, margin)
    return column


def _centre(nx: int, nz: int, z: int, curve: float, lateral: float) -> tuple[int, int]:
    """Canal centre (x, y) of slice z; the column sits 6 voxels in front of it."""
    bend = float(np.sin(np.pi * z / nz))
    return nx // 2 + round(lateral * bend), 10 + round(curve * bend)


def _draw_canal(
    seg: np.ndarray, cls: dict[str, int], curve: float, lateral: float, margin: int
) -> None:
    """Canal tube (radius 4) with the cord (radius 2) inside it, behind the column."""
    nx, ny, nz = seg.shape
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    for z in range(margin, nz - margin):
        cx, cy = _centre(nx, nz, z, curve, lateral)
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        seg[..., z][r2 <= 16] = cls["canal"]
        seg[..., z][r2 <= 4] = cls["cord"]
