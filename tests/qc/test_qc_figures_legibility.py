"""Issue 29: group plot names are not cut at the figure border; the axial orientation letters
read on bright tiles."""

from __future__ import annotations

import math
import re

import numpy as np

from bids_app.qc.geometry import LabelGeometry
from bids_app.qc.group import ANGLES
from bids_app.qc.plots import CHAR_PX, LABEL_ANGLE, Point, strip_plot
from bids_app.qc.previews import TILE, axial_strip


def test_long_category_names_fit_inside_the_plot():
    cats = [(i, c.long_name.split(" (")[0]) for i, c in enumerate(ANGLES)]
    points = [Point(i, 10.0 + i, "#", "t", key=str(i)) for i, _ in cats]
    svg = str(strip_plot("Alignment angles", "deg", cats, points, {}))
    width, height = (float(v) for v in re.search(r'viewBox="0 0 (\S+) (\S+)"', svg).groups())
    labels = re.findall(
        r'<text x="([\d.]+)" y="([\d.]+)"[^>]*rotate\(-(\d+) [^>]*>([^<]*)</text>', svg
    )
    labels = [label for label in labels if label[3] != "deg"]  # the turned units, at the left
    assert {name for *_, name in labels} == {name for _, name in cats}
    for x, y, angle, name in labels:
        # The name ends at (x, y) and runs up to the right; its start hangs down-left.
        length = len(name) * CHAR_PX
        a = math.radians(float(angle))
        x0, y0 = float(x) - length * math.cos(a), float(y) + length * math.sin(a)
        assert x0 >= 0 and y0 <= height, (name, x0, y0, width, height)
    assert float(labels[0][2]) == LABEL_ANGLE


def test_axial_orientation_letters_stand_on_a_dark_box(cervical):
    """A T1w-bright tile (every voxel at the top of the grey scale) still shows 'A' and 'R'
    as light letters on black."""
    geom = LabelGeometry.from_image(cervical.labels)
    bright = np.full(cervical.image.shape, 1000.0, np.float32)
    strip = axial_strip(bright, cervical.image.affine, geom)
    assert strip is not None
    pixels = np.asarray(strip.image.convert("L"), float)
    for x, y in ((TILE // 2 - 3, 1), (3, TILE // 2 - 6)):  # the first tile's A and R
        box = pixels[y : y + 13, x - 2 : x + 9]
        assert (box < 30).mean() > 0.3, "letter background is not dark"
        assert box.max() > 200, "no light letter"
