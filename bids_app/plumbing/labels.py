"""Label tables of the TotalSpineSeg method (docs/method.md §4), shared by every layer.

Only constants and pure look-ups live here, so the labeling algorithm, the phantom
generator, the derivatives writer and the QC code all speak the same label ids.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

CORD = 1
CANAL = 2
SACRUM = 50


@dataclass(frozen=True)
class Label:
    """One row of the final label table (`seg-spine_dseg.tsv`)."""

    index: int
    name: str
    abbreviation: str
    kind: str  # "cord", "canal", "vertebra", "sacrum" or "disc"


def _vertebrae() -> list[tuple[int, str]]:
    rows = [(11 + i, f"C{i + 1}") for i in range(7)]
    rows += [(21 + i, f"T{i + 1}") for i in range(12)]
    rows += [(41 + i, f"L{i + 1}") for i in range(6)]  # 46 = L6 (transitional)
    return rows


def _discs() -> list[tuple[int, str]]:
    rows = [(63 + i, f"C{i + 2}-C{i + 3}") for i in range(5)]
    rows.append((71, "C7-T1"))
    rows += [(72 + i, f"T{i + 1}-T{i + 2}") for i in range(11)]
    rows.append((91, "T12-L1"))
    rows += [(92 + i, f"L{i + 1}-L{i + 2}") for i in range(5)]  # 96 = L5-L6
    rows.append((100, "L5-S"))
    return rows


VERTEBRAE: dict[int, str] = dict(_vertebrae())
DISCS: dict[int, str] = dict(_discs())

FINAL_LABELS: tuple[Label, ...] = (
    Label(CORD, "spinal_cord", "SC", "cord"),
    Label(CANAL, "spinal_canal", "CANAL", "canal"),
    *(Label(i, f"vertebrae_{n}", n, "vertebra") for i, n in VERTEBRAE.items()),
    Label(SACRUM, "sacrum", "S", "sacrum"),
    *(Label(i, "disc_" + n.replace("-", "_"), n, "disc") for i, n in DISCS.items()),
)
LABEL_BY_ID: dict[int, Label] = {lab.index: lab for lab in FINAL_LABELS}
FINAL_IDS: frozenset[int] = frozenset(LABEL_BY_ID)

# Disc landmarks: step-1/2 raw id -> final disc id (C2-C3, C7-T1, T12-L1, L5-S).
LANDMARK_DISCS: dict[int, int] = {2: 63, 3: 71, 4: 91, 5: 100}

# Step-1 raw classes (Dataset101, docs/method.md §4.1) and their region definitions.
STEP1_REGIONS: dict[str, tuple[int, ...]] = {
    "disc": (1, 2, 3, 4, 5),
    "disc_C2_C3": (2,),
    "disc_C7_T1": (3,),
    "disc_T12_L1": (4,),
    "disc_L5_S": (5,),
    "vertebrae": (6, 7),
    "vertebrae_C1": (7,),
    "canal": (8, 9),
    "cord": (9,),
}
# Step-2 raw classes (Dataset102, docs/method.md §4.2).
STEP2_REGIONS: dict[str, tuple[int, ...]] = {
    "disc": (1, 2, 3, 4, 5),
    "disc_C2_C3": (2,),
    "disc_C7_T1": (3,),
    "disc_T12_L1": (4,),
    "disc_L5_S": (5,),
    "vertebrae": (6, 7, 8, 9),
    "vertebrae_odd": (7,),
    "vertebrae_even": (8,),
    "sacrum": (9,),
    "canal": (10, 11),
    "cord": (11,),
}


def own_classes(regions: dict[str, tuple[int, ...]], name: str, *narrower: str) -> tuple[int, ...]:
    """Raw classes of region `name` that belong to none of the `narrower` regions.

    Region-based nnU-Net models write a class per region; e.g. the step-1 canal region is
    {canal, cord}, so the voxels of the canal alone are canal minus cord.
    """
    inner = {c for n in narrower for c in regions[n]}
    return tuple(c for c in regions[name] if c not in inner)


def head_index(regions: dict[str, tuple[int, ...]], name: str) -> int:
    """Output head of a region: nnU-Net orders region heads as dataset.json lists them."""
    return list(regions).index(name)


# Step-1 raw classes, by what they hold (derived from the regions, never typed twice).
STEP1_CORD = own_classes(STEP1_REGIONS, "cord")
STEP1_CANAL = own_classes(STEP1_REGIONS, "canal", "cord")
STEP1_C1 = own_classes(STEP1_REGIONS, "vertebrae_C1")
STEP1_OTHER_BONE = own_classes(STEP1_REGIONS, "vertebrae", "vertebrae_C1")
# Step-2 raw classes.
STEP2_CORD = own_classes(STEP2_REGIONS, "cord")
STEP2_CANAL = own_classes(STEP2_REGIONS, "canal", "cord")
STEP2_SACRUM = own_classes(STEP2_REGIONS, "sacrum")
STEP2_VERTEBRAE = (*STEP2_REGIONS["vertebrae_odd"], *STEP2_REGIONS["vertebrae_even"], *STEP2_SACRUM)
STEP2_VERTEBRA_EXTRA = own_classes(
    STEP2_REGIONS, "vertebrae", "vertebrae_odd", "vertebrae_even", "sacrum"
)
DISC_CLASSES = STEP1_REGIONS["disc"]  # generic disc + the four landmark discs, both steps

# Discs that mark a level (the L5-L6 disc of a transitional spine, 96, does not), in level
# order; the first one, C2-C3, is level 3.
LEVEL_DISCS: tuple[int, ...] = tuple(d for d in sorted(DISCS) if d != 96)
FIRST_DISC_LEVEL = 3

# Vertebra directly below each disc (docs/method.md §3.2 step 8).
VERTEBRA_BELOW_DISC: dict[int, int] = {
    **{63 + i: 13 + i for i in range(5)},
    71: 21,
    **{72 + i: 22 + i for i in range(11)},
    91: 41,
    **{92 + i: 42 + i for i in range(5)},
    100: SACRUM,
}


def level_name(label: int) -> str:
    """Short level name of a final label id ("C2", "T12-L1", "cord")."""
    lab = LABEL_BY_ID.get(label)
    if lab is None:
        raise KeyError(f"label {label} is not in the final TotalSpineSeg table")
    return lab.abbreviation


def is_disc(label: int) -> bool:
    return label in DISCS


def is_vertebra(label: int) -> bool:
    return label in VERTEBRAE or label == SACRUM


def label_colour(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per label (used by the LUT and the previews)."""
    if label == CORD:
        return (255, 230, 0)
    if label == CANAL:
        return (0, 200, 255)
    # Golden-angle hue walk: neighbouring levels get clearly different colours.
    hue = (label * 0.618033988749895) % 1.0
    sat, val = (0.55, 0.95) if is_disc(label) else (0.75, 0.85)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))


def label_hex(label: int) -> str:
    r, g, b = label_colour(label)
    return f"#{r:02x}{g:02x}{b:02x}"
