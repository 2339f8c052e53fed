"""Grading rules on measured heights and slips: Genant's semi-quantitative grade and shape,
Meyerding's listhesis grade. Image measures for research, not diagnoses.

Genant HK, Wu CY, van Kuijk C, Nevitt MC. Vertebral fracture assessment using a
semiquantitative technique. J Bone Miner Res 8(9): 1137-1148 (1993).
Meyerding HW. Spondylolisthesis. Surg Gynecol Obstet 54: 371-377 (1932).
"""

from __future__ import annotations

import math

# Where heights are read on the body's mid-sagittal section: AP share of its depth from the
# posterior wall (heights at the very walls would measure the labels' rounded corners).
HEIGHT_SHARES: dict[str, float] = {"anterior": 0.85, "middle": 0.5, "posterior": 0.15}
# Genant 1993: grade 0 below 20 % height loss, 1 from 20 %, 2 from 25 %, 3 above 40 %.
GENANT_LOWER: tuple[float, ...] = (0.20, 0.25, 0.40)
# Meyerding 1932: grade I below 25 % of the lower endplate's depth, II to 50, III to 75,
# IV to 100, V beyond (spondyloptosis).
MEYERDING = ("I", "II", "III", "IV", "V")
# A slip under this share is not graded: within the measure's error (unslipped discs read up
# to about 7 % on the phantoms' own labels, 2 in 207 read 10 % or more on the demo models'
# labels, benchmarks/out/vertebral_bodies.json).
LISTHESIS_MIN_PERCENT = 10.0


def genant(
    anterior_posterior: float, middle_posterior: float, posterior_neighbours: float
) -> tuple[float, int | None, str]:
    """(height loss as a fraction, grade 0-3, shape) from the three height ratios.

    Wedge: anterior against posterior height; biconcave: middle against posterior; crush:
    posterior against the mean posterior height of the neighbouring bodies. The largest
    loss decides grade and shape; a ratio that could not be measured (NaN) is left out.
    Shape is `normal` at grade 0; all NaN gives (NaN, None, 'n/a').
    """
    losses = {
        "wedge": 1 - anterior_posterior,
        "biconcave": 1 - middle_posterior,
        "crush": 1 - posterior_neighbours,
    }
    known = {k: v for k, v in losses.items() if not math.isnan(v)}
    if not known:
        return math.nan, None, "n/a"
    shape = max(known, key=lambda k: known[k])
    loss = known[shape]
    grade = sum(loss >= edge for edge in GENANT_LOWER)
    return loss, grade, shape if grade else "normal"


def meyerding(percent: float) -> str:
    """Meyerding's grade of an anterior slip (percentage of the lower endplate's depth);
    `none` under LISTHESIS_MIN_PERCENT and for a posterior slip (retrolisthesis)."""
    if math.isnan(percent):
        return "n/a"
    if percent < LISTHESIS_MIN_PERCENT:
        return "none"
    return MEYERDING[min(int(percent // 25), 4)]
