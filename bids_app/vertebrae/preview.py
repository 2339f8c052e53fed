"""The vertebral-body figure and the subject report's section.

One tile per body with a mid-sagittal section: the image on that section (anterior on the
left, superior up, as in the sagittal preview), the body's outline, the three heights as the
lines they were read on, and at each graded disc the two corners the slip joins. The lines
are drawn from the same section coordinates the numbers came from, so a wrong number shows
as a wrong line.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import image_data, sample
from bids_app.qc.previews import figure
from bids_app.qc.records import read_tsv
from bids_app.vertebrae.grades import HEIGHT_SHARES
from bids_app.vertebrae.heights import SECTION_OFFSETS, BodyMeasures, Section
from bids_app.vertebrae.parts import PART_NAMES

TILE = 220  # px
PAD_MM = 6.0
COLOURS = {
    "anterior": (255, 90, 90),
    "middle": (255, 210, 0),
    "posterior": (0, 210, 255),
    "outline": (120, 255, 120),
    "slip": (255, 110, 255),
}
TEXT = (235, 235, 235)
REPORT_COLUMNS = (
    ("level", "level"),
    ("anterior_height_mm", "anterior (mm)"),
    ("middle_height_mm", "middle (mm)"),
    ("posterior_height_mm", "posterior (mm)"),
    ("anterior_posterior_ratio", "ant/post"),
    ("middle_posterior_ratio", "mid/post"),
    ("posterior_neighbour_ratio", "post/neighbours"),
    ("genant_grade", "Genant grade"),
    ("deformity_shape", "shape"),
    ("slip_percent", "slip (%)"),
    ("meyerding_grade", "Meyerding"),
    ("na_reason", "n/a because"),
)


def figure_path(output_dir: Path, subject: str, prefix: str, suffix: str) -> Path:
    return (
        Path(output_dir)
        / f"sub-{subject}"
        / "figures"
        / f"{prefix}_seg-vertparts_desc-{suffix}_bodies.png"
    )


def _tile(
    image: np.ndarray, affine: np.ndarray, sec: Section, row: dict, slips: list[tuple]
) -> Image.Image:
    """One body's tile: section image, outline, height lines, slip corners, caption."""
    k = SECTION_OFFSETS.index(0.0)
    mask = sec.mask[k]
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    h0, h1 = sec.h[rows[0]] + PAD_MM, sec.h[rows[-1]] - PAD_MM
    a0, a1 = sec.a[cols[0]] - PAD_MM, sec.a[cols[-1]] + PAD_MM
    scale = (TILE - 30) / max(h0 - h1, a1 - a0)
    width, height = int((a1 - a0) * scale) + 1, int((h0 - h1) * scale) + 1
    # Pixel (x, y): a decreasing to the right (anterior on the left), h decreasing downwards.
    aa = a1 - (np.arange(width) + 0.5) / scale
    hh = h0 - (np.arange(height) + 0.5) / scale
    H, A = np.meshgrid(hh, aa, indexing="ij")
    pts = sec.frame.world(A, np.full(A.shape, sec.l0), H)
    grey = sample(image, affine, pts, order=1)
    lo, hi = np.percentile(grey, [1, 99]) if grey.size else (0.0, 1.0)
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    # The body outline, from the section mask resampled on the pixels.
    ia = np.clip(np.round((A - sec.a[0]) / (sec.a[1] - sec.a[0])).astype(int), 0, len(sec.a) - 1)
    ih = np.clip(np.round((sec.h[0] - H) / (sec.h[0] - sec.h[1])).astype(int), 0, len(sec.h) - 1)
    body = mask[ih, ia]
    edge = body & ~ndimage.binary_erosion(body)
    rgb[edge] = COLOURS["outline"]
    tile = Image.new("RGB", (TILE, TILE + 28), (0, 0, 0))
    tile.paste(Image.fromarray(rgb), (5, 5))
    draw = ImageDraw.Draw(tile)

    def px(a: float, h: float) -> tuple[float, float]:
        return 5 + (a1 - a) * scale, 5 + (h0 - h) * scale

    walls = sec.walls(k)
    if walls is not None and not row.get("na_reason"):
        post, ant = walls
        for name, share in HEIGHT_SHARES.items():
            a = post + share * (ant - post)
            top, bot = sec.end_at(k, a, True), sec.end_at(k, a, False)
            if not (math.isnan(top) or math.isnan(bot)):
                draw.line([px(a, top), px(a, bot)], fill=COLOURS[name], width=2)
    for world_up, world_lo in slips:
        for p in (world_up, world_lo):
            a, _, h = sec.frame.coords(p[None])[0]
            x, y = px(a, h)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=COLOURS["slip"], width=2)
        (xa, ya), (xb, yb) = (
            px(*sec.frame.coords(p[None])[0, [0, 2]]) for p in (world_up, world_lo)
        )
        draw.line([(xa, ya), (xb, yb)], fill=COLOURS["slip"], width=1)
    draw.text((5, TILE - 2), _caption(row), fill=TEXT)
    return tile


def _caption(row: dict) -> str:
    name = str(row["level"])
    if row.get("na_reason"):
        return f"{name}: n/a"
    grade = row.get("genant_grade")
    shape = row.get("deformity_shape")
    return (
        f"{name}: grade {int(grade)} {shape}"
        if isinstance(grade, (int, float)) and grade == grade
        else name
    )


def write_figure(path: Path, image: nib.Nifti1Image, measures: BodyMeasures) -> bool:
    """The tiles of every body with a section, in rows of five; False when there is none."""
    data = image_data(image, np.float32)
    rows = {r["index"]: r for r in measures.rows}
    bodies = [v for v in measures.sections if v != L.SACRUM and v in rows]
    if not bodies:
        return False
    slips_on: dict[int, list[tuple]] = {}
    for upper, _, world_up, world_lo in measures.corners.values():
        slips_on.setdefault(upper, []).append((world_up, world_lo))
    tiles = [
        _tile(data, image.affine, measures.sections[v], rows[v], slips_on.get(v, []))
        for v in bodies
    ]
    per_row = 5
    n_rows = math.ceil(len(tiles) / per_row)
    legend = 22
    out = Image.new("RGB", (per_row * TILE, n_rows * (TILE + 28) + legend), (0, 0, 0))
    for i, tile in enumerate(tiles):
        out.paste(tile, ((i % per_row) * TILE, legend + (i // per_row) * (TILE + 28)))
    draw = ImageDraw.Draw(out)
    x = 5
    for name in ("anterior", "middle", "posterior", "slip"):
        draw.rectangle((x, 6, x + 10, 16), fill=COLOURS[name])
        label = f"{name} height" if name != "slip" else "slip corners"
        draw.text((x + 14, 4), label, fill=TEXT)
        x += 14 + 8 * len(label) + 12
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return True


def report_section(root: Path, stamp: dict) -> dict | None:
    """The subject report's vertebral-body section of one image (None without its table)."""
    outputs = stamp.get("outputs") or []
    table = next(
        (r for r in outputs if "_seg-vertparts_desc-" in r and r.endswith("_morphometry.tsv")), None
    )
    if table is None:
        return None
    fig_rel = next((r for r in outputs if "_seg-vertparts_desc-" in r and r.endswith(".png")), None)
    rows = read_tsv(Path(root) / table)
    flagged = [r["level"] for r in rows if _number(r.get("genant_grade")) >= 1]
    return {
        "figure": figure(
            root,
            fig_rel,
            "Mid-sagittal section of each vertebral body: outline (green), anterior (red), "
            "middle (yellow) and posterior (blue) heights where they were measured, slip "
            "corners (magenta)",
        ),
        "headers": [h for _, h in REPORT_COLUMNS],
        "rows": [[_cell(row.get(k)) for k, _ in REPORT_COLUMNS] for row in rows],
        "file": table,
        "possible_fracture": flagged,
        "parts": [f"{i} {name}" for i, (name, _) in PART_NAMES.items()],
    }


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and value == value else math.nan


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.2f}"
    return "" if value is None else str(value)
