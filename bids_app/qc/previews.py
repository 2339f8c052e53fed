"""QC previews: a sagittal overlay and an axial strip, drawn in true anatomical orientation.

Both pictures are sampled in world space (scanner RAS mm) on square pixels, so the input's
voxel order, voxel size and obliquity never change what is shown: the sagittal view has
superior at the top and anterior on the left; axial tiles are cut perpendicular to each disc's
axis, anterior at the top and the patient's right on the left (radiological convention). The
sagittal plane follows the canal centreline left-right, so a scoliotic spine stays in view.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from bids_app.bids.derivatives import marker_levels
from bids_app.plumbing import labels as L
from bids_app.plumbing.atomic import write_bytes_atomic
from bids_app.qc.geometry import (
    SPINE_ORDER,
    LabelGeometry,
    anterior_frame,
    grid_corners,
    inside_grid,
    plane_points,
    sample,
    to_world,
)

ALPHA = 0.4  # opacity of the label fill; contours are drawn opaque
MARGIN = 64  # px of tag column on each side of the sagittal view
HEADER = 18  # px above the sagittal view for the orientation letters
ROWS_RANGE = (420, 1200)  # sagittal view height in px
PX_PER_MM = 2.0  # sagittal view scale when the field of view fits ROWS_RANGE
MIN_TAG_LUMINANCE = 0.45  # tag text is lightened to this relative luminance, readable on black
SLAB_MM = (0.0, -1.5, 1.5, -3.0, 3.0)  # lateral offsets filling background in the label slab
TILE = 200  # px per axial tile side
TILES_PER_ROW = 6
GAP = 4  # px between tiles
TEXT = (235, 235, 235)
# zlib level of the PNGs: 3 writes the same pixels 2.5x faster than Pillow's default 6, in
# files 0.5-3 % larger (previews are flat colour over a grey slice).
PNG_COMPRESS_LEVEL = 3


@dataclass
class Picture:
    """A rendered preview: RGB image, tags drawn on it and the box of the image area."""

    image: Image.Image
    tags: list[dict[str, object]] = field(default_factory=list)
    image_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 of the view
    # Sagittal view only: world z of its top edge, world y of its left (anterior) edge and
    # its pixel size, so a pixel of the view can be mapped back to scanner mm.
    world: dict[str, float] = field(default_factory=dict)

    def png_bytes(self) -> bytes:
        info = PngInfo()
        info.add_text("spineseg:tags", json.dumps(self.tags))
        info.add_text("spineseg:image_box", json.dumps(list(self.image_box)))
        if self.world:
            info.add_text("spineseg:world", json.dumps(self.world))
        buf = BytesIO()
        self.image.save(buf, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        return buf.getvalue()

    def save(self, path: Path) -> None:
        write_bytes_atomic(path, self.png_bytes())


@cache
def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@cache
def _lut() -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    for v in range(1, 256):
        lut[v] = L.label_colour(v)
    return lut


def _grey(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 grey levels, windowed on the 0.5-99.5 percentiles of the valid samples."""
    v = values[valid]
    if v.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(v, [0.5, 99.5])
    scaled = (values - lo) / max(float(hi - lo), 1e-6)
    out = np.clip(scaled * 255, 0, 255)
    out[~valid] = 0
    return out.astype(np.uint8)


def overlay(grey: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """RGB uint8: labels blended over grey, with opaque one-pixel label contours."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    mask = lab > 0
    colours = _lut()[lab]
    rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * colours[mask]
    pad = np.pad(lab, 1, mode="edge")
    edge = mask & (
        (pad[:-2, 1:-1] != lab)
        | (pad[2:, 1:-1] != lab)
        | (pad[1:-1, :-2] != lab)
        | (pad[1:-1, 2:] != lab)
    )
    rgb[edge] = colours[edge]
    return np.rint(rgb).astype(np.uint8)


def _spread(rows: Sequence[float], height: int, step: int) -> list[int]:
    """Tag positions near `rows` (sorted), at least `step` px apart, inside [0, height)."""
    out: list[int] = []
    for r in rows:
        out.append(int(max(r, out[-1] + step) if out else max(r, 0)))
    overflow = (out[-1] + step) - height if out else 0
    if overflow > 0:  # push the tail back up without breaking the spacing
        out = [max(0, y - overflow) for y in out]
        for i in range(1, len(out)):
            out[i] = max(out[i], out[i - 1] + step)
    return out


def _view_box(
    image_shape: tuple[int, ...], image_affine: np.ndarray, geom: LabelGeometry | None
) -> tuple[np.ndarray, np.ndarray]:
    """World AABB (lo, hi) shown in the sagittal view: the labels plus a margin, in the image."""
    corners = grid_corners(image_shape, image_affine)
    lo, hi = corners.min(0), corners.max(0)
    if geom is None or not geom.present:
        return lo, hi
    world = [geom.coords(label) for label in geom.present]
    lab_lo = np.min([w.min(0) for w in world], axis=0)
    lab_hi = np.max([w.max(0) for w in world], axis=0)
    margin = np.array([0.0, 25.0, 20.0])
    return np.maximum(lo, lab_lo - margin), np.minimum(hi, lab_hi + margin)


def _pixel_size(span_s: float) -> float:
    """mm per pixel: PX_PER_MM, so a view's height follows its field of view within ROWS_RANGE.

    The scale does not depend on the voxel size: tags and labels stay legible on a short,
    coarse scan, and a whole spine still fits a screen.
    """
    rows = float(np.clip(span_s * PX_PER_MM, *ROWS_RANGE))
    return span_s / rows


def luminance(colour: Sequence[int]) -> float:
    """Relative luminance (WCAG 2) of an sRGB colour, 0 (black) to 1 (white)."""
    lin = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def tag_colour(label: int) -> tuple[int, int, int]:
    """The label's colour mixed with white until it reads on black (dark blue would not)."""
    colour = np.array(L.label_colour(label), float)
    for w in np.linspace(0, 1, 21):
        mixed = tuple(round(float(v)) for v in (1 - w) * colour + w * 255)
        if luminance(mixed) >= MIN_TAG_LUMINANCE:
            return mixed  # type: ignore[return-value]
    return (255, 255, 255)


def _centre_x(geom: LabelGeometry | None, lo: np.ndarray, hi: np.ndarray, z: np.ndarray):
    """Left-right position of the sagittal plane at each world height z."""
    if geom is not None and geom.centreline is not None:
        return geom.centreline.x_at(z)
    if geom is not None and geom.present:
        x = np.mean([geom.centroid(lab)[0] for lab in geom.present])
        return np.full(z.shape, x)
    return np.full(z.shape, (lo[0] + hi[0]) / 2)


def _markers(levels: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[int, np.ndarray]]:
    """(level value, world position) of every level marker voxel."""
    if levels is None:
        return []
    data, affine = levels
    ijk = np.argwhere(data > 0)
    world = to_world(affine, ijk.astype(float))
    return [(int(data[tuple(v)]), w) for v, w in zip(ijk, world, strict=True)]


def sagittal(
    image: np.ndarray,
    image_affine: np.ndarray,
    geom: LabelGeometry | None,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
    untagged: frozenset[int] = frozenset(),
) -> Picture:
    """Sagittal overlay: superior up, anterior left, square pixels, level tags in the margins.

    Labels in `untagged` are drawn but not named (the step-1 label 50 holds every vertebra).

    `image` is the source intensity array on the grid of `image_affine`; `geom` holds the final
    labels (any grid); `levels` is an optional (marker array, affine) pair.
    """
    lo, hi = _view_box(image.shape, image_affine, geom)
    d = _pixel_size(hi[2] - lo[2])
    z = hi[2] - (np.arange(math.ceil((hi[2] - lo[2]) / d)) + 0.5) * d
    y = hi[1] - (np.arange(math.ceil((hi[1] - lo[1]) / d)) + 0.5) * d
    xc = _centre_x(geom, lo, hi, z)

    def plane(dx: float) -> np.ndarray:
        pts = np.empty((z.size, y.size, 3))
        pts[..., 0] = (xc + dx)[:, None]
        pts[..., 1] = y[None, :]
        pts[..., 2] = z[:, None]
        return pts

    centre = plane(0.0)
    grey = _grey(
        sample(image, image_affine, centre, order=1), inside_grid(image.shape, image_affine, centre)
    )
    lab = np.zeros(grey.shape, np.uint8)
    if geom is not None:
        for dx in SLAB_MM:
            fill = lab == 0
            lab[fill] = sample(geom.data, geom.affine, plane(dx), order=0)[fill]
    view = overlay(grey, lab)

    h, w = view.shape[:2]
    canvas = Image.new("RGB", (w + 2 * MARGIN, h + HEADER), (0, 0, 0))
    canvas.paste(Image.fromarray(view), (MARGIN, HEADER))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((MARGIN + 2, 2), "A", fill=TEXT, font=font)
    draw.text((MARGIN + w - 10, 2), "P", fill=TEXT, font=font)
    tags: list[dict[str, object]] = []

    def put_tags(items: list[tuple[float, str, tuple[int, int, int]]], side: str) -> None:
        items.sort()
        ys = _spread([r for r, _, _ in items], h - 12, 13)
        for (row, name, colour), ty in zip(items, ys, strict=True):
            y0 = HEADER + ty
            if side == "left":
                tw = draw.textlength(name, font=font)
                draw.text((MARGIN - 8 - tw, y0), name, fill=colour, font=font)
                draw.line([(MARGIN - 6, y0 + 6), (MARGIN - 1, HEADER + row)], fill=colour)
            else:
                draw.text((MARGIN + w + 8, y0), name, fill=colour, font=font)
                draw.line([(MARGIN + w, HEADER + row), (MARGIN + w + 6, y0 + 6)], fill=colour)
            tags.append({"name": name, "side": side, "y": y0, "colour": list(colour)})

    present = np.unique(lab)
    disc_items: list[tuple[float, str, tuple[int, int, int]]] = []
    vert_items: list[tuple[float, str, tuple[int, int, int]]] = []
    for label in (int(v) for v in present if v in SPINE_ORDER and v not in untagged):
        row = float(np.nonzero(lab == label)[0].mean())
        item = (row, L.level_name(label), tag_colour(label))
        (disc_items if label in L.DISCS else vert_items).append(item)
    names = marker_levels()
    for value, pos in _markers(levels):
        r, c = (hi[2] - pos[2]) / d - 0.5, (hi[1] - pos[1]) / d - 0.5
        x0, y0 = MARGIN + c, HEADER + r
        draw.ellipse([x0 - 3, y0 - 3, x0 + 3, y0 + 3], fill=(255, 255, 255), outline=(0, 0, 0))
        if geom is None and value in names:  # no final labels: the markers name the levels
            name, colour_of = names[value]
            disc_items.append((r, name, tag_colour(colour_of)))
    put_tags(disc_items, "left")
    put_tags(vert_items, "right")
    world = {"top_z_mm": float(hi[2]), "anterior_y_mm": float(hi[1]), "mm_per_pixel": d}
    return Picture(canvas, tags, (MARGIN, HEADER, MARGIN + w, HEADER + h), world)


def _tile(
    image: np.ndarray, image_affine: np.ndarray, geom: LabelGeometry, disc: int
) -> np.ndarray:
    """One axial tile (TILE x TILE RGB) perpendicular to a disc's axis through its centroid."""
    c = geom.centroid(disc)
    axis = geom.disc_axis(disc)
    if axis is None:
        axis = np.array([0.0, 0.0, 1.0])
    ant, right = anterior_frame(axis)
    depth = 4 * math.sqrt(float(np.var((geom.coords(disc) - c) @ ant)))
    centre, reach = c, 0.5 * depth + 12
    cl = geom.centreline
    if cl is not None:
        canal = cl.points[cl.nearest(c)]
        centre = (c + canal) / 2
        reach += 0.5 * float(np.linalg.norm(c - canal))
    half = float(np.clip(reach, 25.0, 50.0))
    pts = plane_points(centre, -ant, -right, half, 2 * half / TILE)
    grey = _grey(
        sample(image, image_affine, pts, order=1), inside_grid(image.shape, image_affine, pts)
    )
    return overlay(grey, sample(geom.data, geom.affine, pts, order=0))


def orientation_mark(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """An orientation letter on a black box, readable on bright tissue (T1w fat) too."""
    x, y = xy
    draw.rectangle([x - 3, y - 1, x + draw.textlength(text, font=font) + 2, y + 14], fill=(0, 0, 0))
    draw.text((x, y), text, fill=TEXT, font=font)


def axial_strip(image: np.ndarray, image_affine: np.ndarray, geom: LabelGeometry) -> Picture | None:
    """A grid of axial tiles, one per disc from top to bottom; None without discs."""
    discs = [x for x in SPINE_ORDER if x in L.DISCS and x in geom.boxes]
    if not discs:
        return None
    ncol = min(len(discs), TILES_PER_ROW)
    nrow = math.ceil(len(discs) / ncol)
    canvas = Image.new("RGB", (ncol * (TILE + GAP) - GAP, nrow * (TILE + GAP) - GAP))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    tags: list[dict[str, object]] = []
    for i, disc in enumerate(discs):
        x0, y0 = (i % ncol) * (TILE + GAP), (i // ncol) * (TILE + GAP)
        canvas.paste(Image.fromarray(_tile(image, image_affine, geom, disc)), (x0, y0))
        name = L.level_name(disc)
        tw = draw.textlength(name, font=font)
        draw.rectangle([x0, y0, x0 + tw + 6, y0 + 15], fill=(0, 0, 0))
        draw.text((x0 + 3, y0 + 1), name, fill=tag_colour(disc), font=font)
        orientation_mark(draw, (x0 + TILE // 2 - 3, y0 + 1), "A", font)
        orientation_mark(draw, (x0 + 3, y0 + TILE // 2 - 6), "R", font)
        tags.append({"name": name, "x": x0, "y": y0})
    return Picture(canvas, tags, (0, 0, canvas.width, canvas.height))


CURVE_COLOURS = ((255, 210, 0), (0, 220, 255), (255, 110, 200))  # one per sagittal angle


def curvature(
    view: Picture,
    line: Sequence[np.ndarray],
    angles: Sequence[tuple[str, float, Sequence[tuple[np.ndarray, np.ndarray, float]]]],
) -> Picture:
    """The sagittal view with the centroid line and each angle's fitted endplates drawn on it.

    `line` holds world points (disc centroids, top to bottom); `angles` holds (title, degrees,
    [(centre, normal, half depth in mm) of both fitted endplates]): each line spans the
    endplate the angle was measured on. World points map to the view through its `world`
    record, so the drawing lands where the labels are, whatever the scan's grid.
    """
    x0, y0 = view.image_box[:2]
    top, front, d = (view.world[k] for k in ("top_z_mm", "anterior_y_mm", "mm_per_pixel"))

    def px(p: np.ndarray) -> tuple[float, float]:
        return x0 + (front - float(p[1])) / d, y0 + (top - float(p[2])) / d

    canvas = view.image.copy()
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if len(line) > 1:
        draw.line([px(p) for p in line], fill=(255, 255, 255), width=2)
    tags: list[dict[str, object]] = []
    for i, (title, degrees, plates) in enumerate(angles):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        segments = []
        for centre, normal, half in plates:
            along = np.array([0.0, -normal[2], normal[1]])  # in the sagittal plane, across n
            along /= max(float(np.linalg.norm(along)), 1e-9)
            ends = [px(centre - half * along), px(centre + half * along)]
            draw.line(ends, fill=colour, width=2)
            segments.append([round(v, 1) for xy in ends for v in xy])
        text = f"{title}: {degrees:.1f} deg"
        ty = y0 + 4 + 15 * i
        draw.rectangle(
            [x0 + 2, ty, x0 + 6 + draw.textlength(text, font=font), ty + 14], fill=(0, 0, 0)
        )
        draw.text((x0 + 4, ty + 1), text, fill=colour, font=font)
        tags.append({"name": title, "degrees": round(degrees, 2), "lines": segments})
    return Picture(canvas, tags, view.image_box, view.world)


def figure(root: Path, rel: str | None, caption: str) -> dict | None:
    """Template data of one preview for a report (the subject report's and a capability's
    section), or None when the file is missing or unreadable."""
    if not rel:
        return None
    try:
        with Image.open(root / rel) as im:
            width, height = im.size
    except OSError:
        return None
    return {"src": rel, "alt": caption, "caption": caption, "width": width, "height": height}
