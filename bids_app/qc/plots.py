"""Inline SVG strip plots for the group page: one column per level, one point per image.

Hand-written SVG keeps the page self-contained (no plotting library, no script); every point
links to its subject report and carries a tooltip, and Tukey boxes and fences are drawn where
the group is large enough for them to mean something.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 64  # px margins around the plotting area (least)
COLUMN = 34  # px per level
HEIGHT = 300  # px, with the least bottom margin
CHAR_PX = 7.0  # upper bound of the width of one 11 px character
LABEL_ANGLE = 55  # degrees the category names are turned


@dataclass(frozen=True)
class Point:
    category: int  # label id
    value: float
    href: str
    tooltip: str
    outlier: bool = False
    key: str = ""  # image key, seeds the horizontal jitter


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def strip_plot(
    title: str,
    units: str,
    categories: Sequence[tuple[int, str]],
    points: Sequence[Point],
    fences: Mapping[int, tuple[float, float]],
) -> Markup:
    """SVG of `points` over `categories` ((label id, name) in display order).

    `fences` maps a category to its Tukey fences; categories in it also get a Q1-Q3 box and a
    median line.
    """
    cats = [c for c in categories if any(p.category == c[0] for p in points)]
    # Turned category names hang down and to the left of their column: the margins grow to
    # hold the longest ("Coronal Cobb estimate"), so no name is cut at the border.
    longest = max((len(name) for _, name in cats), default=0) * CHAR_PX
    rad = math.radians(LABEL_ANGLE)
    bottom = max(BOTTOM, math.ceil(14 + longest * math.sin(rad) + 8))
    left = max(LEFT, math.ceil(longest * math.cos(rad) - COLUMN / 2 + 8))
    height = HEIGHT - BOTTOM + bottom
    width = max(360, left + RIGHT + COLUMN * len(cats))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    if not cats:
        parts.append(f'<text x="{LEFT}" y="60" font-size="12">no values</text></svg>')
        return Markup("".join(parts))
    vals = [p.value for p in points]
    lo, hi = min(vals), max(vals)
    pad = 0.06 * (hi - lo) if hi > lo else 0.1 * (abs(hi) or 1.0)
    lo, hi = lo - pad, hi + pad
    y0, y1 = height - bottom, TOP

    def ypix(v: float) -> float:
        return y0 - (v - lo) / (hi - lo) * (y0 - y1)

    def xpix(i: int) -> float:
        return left + COLUMN * (i + 0.5)

    for t in nice_ticks(lo, hi):
        y = ypix(t)
        parts.append(
            f'<line x1="{left}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(_fmt(t))}</text>"
        )
    parts.append(
        f'<text x="14" y="{(y0 + y1) / 2:.0f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2:.0f})">{escape(units)}</text>'
    )
    index = {c[0]: i for i, c in enumerate(cats)}
    for cat, name in cats:
        x = xpix(index[cat])
        parts.append(
            f'<text x="{x:.1f}" y="{y0 + 14}" font-size="11" text-anchor="end" '
            f'transform="rotate(-{LABEL_ANGLE} {x:.1f} {y0 + 14})">{escape(name)}</text>'
        )
        if cat in fences:
            v = np.array([p.value for p in points if p.category == cat])
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            parts.append(
                f'<rect x="{x - 10:.1f}" y="{ypix(q3):.1f}" width="20" '
                f'height="{max(ypix(q1) - ypix(q3), 0.5):.1f}" fill="#d8dee4" stroke="#8c959f"/>'
                f'<line x1="{x - 10:.1f}" x2="{x + 10:.1f}" y1="{ypix(med):.1f}" '
                f'y2="{ypix(med):.1f}" stroke="#57606a" stroke-width="2"/>'
            )
            for fence in fences[cat]:
                if lo <= fence <= hi:
                    parts.append(
                        f'<line x1="{x - 14:.1f}" x2="{x + 14:.1f}" y1="{ypix(fence):.1f}" '
                        f'y2="{ypix(fence):.1f}" stroke="#cf222e" stroke-dasharray="3 2"/>'
                    )
    for p in points:
        jitter = (zlib.crc32(p.key.encode()) % 1000 / 1000 - 0.5) * 14
        x, y = xpix(index[p.category]) + jitter, ypix(p.value)
        style = (
            'r="5" class="outlier"' if p.outlier else 'r="3.2" fill="#0969da" fill-opacity="0.7"'
        )
        parts.append(
            f'<a href="{escape(p.href)}"><circle cx="{x:.1f}" cy="{y:.1f}" {style}>'
            f"<title>{escape(p.tooltip)}</title></circle></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
